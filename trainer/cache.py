"""What `--cache` means: which splits the input pipelines cache, where, and the shuffle buffer.

  auto (default)  validation (read every epoch), then train, cached in memory while their
                  decoded size fits this process's share of the memory budget; a split that
                  does not fit streams from its shards every epoch, so data larger than
                  memory trains instead of being killed by the kernel.
  memory          train and validation in memory; stops before training, naming the sizes
                  and the flag to change, when they do not fit the budget that auto would
                  fill (what auto would stream, memory refuses, rather than being killed by
                  the kernel mid-run).
  none            every split streams from its shards every epoch.
  <path prefix>   train and validation decoded into files <prefix>-<split>-... (a local disk
                  faster than the shards' storage; the files can be larger than the shards,
                  since they hold decoded pixels).
The test split is read once, at the end, and is never cached. "" is the old spelling of
memory (flags.txt of runs made before --cache=auto).

The budget: this process may use `memory.current().available` bytes more (under the cgroup
limit or the physical RAM, whichever leaves less, less what is in use); CACHE_SHARE of that,
divided among the worker processes of this host, may hold caches. The rest is headroom for what
comes after the decision: the model and optimizer state, prefetch and shuffle buffers and
the steps' activations. Images are cached at the size `input_pipeline.cached_size` says:
after resizing when training below the stored size, so 224-px records trained at 32 px
cost 3 KB each.
"""

import dataclasses
from typing import Optional

from absl import logging

from trainer import config as config_lib
from trainer import input_pipeline
from trainer import memory as memory_lib

CACHE_SHARE = 0.5  # of the memory left when the data is planned
SHUFFLE_SHARE = 0.25  # of what the caches leave of the budget, for the shuffle buffer
# tf.data keeps each cached element as tensors (image, label): a little beyond the pixels.
PER_EXAMPLE_OVERHEAD = 256  # bytes
# Examples. Below this the buffer barely mixes neighbouring records (the file order, new
# each epoch, and the interleave of several files still mix across shards).
MIN_SHUFFLE_BUFFER = 128
CACHED_SPLITS = ("validation", "train")  # in the order auto fills the budget
GIB, MIB = 2**30, 2**20


@dataclasses.dataclass(frozen=True)
class CachePlan:
  """Per split: None (stream), "memory" or a file path prefix; and the shuffle buffer."""
  train: Optional[str]
  validation: Optional[str]
  shuffle_buffer: int  # train examples held for shuffling
  decoded: dict  # split -> bytes this process's share holds decoded at the cached size
  budget: int  # bytes this process may give caches (CACHE_SHARE of its share)

  def for_split(self, split):
    return getattr(self, split, None)


def example_bytes(info, image_size):
  """Bytes one decoded example holds at the cached size (in a cache or a shuffle buffer)."""
  height, width = input_pipeline.cached_size(info, image_size)
  return height * width * 3 + PER_EXAMPLE_OVERHEAD


def decoded_bytes(info, split, image_size, num_workers=1):
  """Bytes that one worker's share of `split` holds decoded at the cached size."""
  examples = -(-info.split(split).num_examples // num_workers)  # ceil
  return examples * example_bytes(info, image_size)


def _size(n):
  return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / MIB:.0f} MiB"


def plan(config, info, *, num_workers=1, workers_on_host=1, memory=None):
  """The CachePlan for `config.cache`; raises ConfigError for --cache=memory on data that
  cannot fit. `memory`: a memory_lib.Memory (default: this process, now)."""
  memory = memory or memory_lib.current()
  image_size = config.image_size or None
  decoded = {s: decoded_bytes(info, s, image_size, num_workers) for s in CACHED_SPLITS}
  available = memory.available // workers_on_host
  budget = int(available * CACHE_SHARE)
  mode = config.cache.strip()
  if mode in ("", "memory"):
    need = sum(decoded.values())
    if need > budget:
      raise config_lib.ConfigError(
          f"--cache=memory: the decoded train and validation splits need {_size(need)} "
          f"(at {'x'.join(map(str, input_pipeline.cached_size(info, image_size)))} px), more "
          f"than the cache budget of {_size(budget)}: {100 * CACHE_SHARE:.0f}% of the "
          f"{_size(available)} this process can use (limit {_size(memory.limit)} from "
          f"{memory.source}, {_size(memory.used)} in use"
          + (f", shared by {workers_on_host} workers on this host" if workers_on_host > 1
             else "") + "), the rest being the training's own; use --cache=auto or "
          "--cache=none to stream from the shards, or a smaller --image_size")
    chosen = {s: "memory" for s in CACHED_SPLITS}
  elif mode == "none":
    chosen = {s: None for s in CACHED_SPLITS}
  elif mode == "auto":
    chosen, left = {}, budget
    for split in CACHED_SPLITS:
      fits = decoded[split] <= left
      chosen[split] = "memory" if fits else None
      left -= decoded[split] if fits else 0
  else:
    chosen = {s: mode for s in CACHED_SPLITS}  # a file prefix
  in_memory = sum(decoded[s] for s in CACHED_SPLITS if chosen[s] == "memory")
  # Cached or not, the shuffle buffer holds decoded examples: size it by what is left.
  room = max(0, budget - in_memory) * SHUFFLE_SHARE // example_bytes(info, image_size)
  shuffle = int(min(input_pipeline.DEFAULT_SHUFFLE_BUFFER, max(MIN_SHUFFLE_BUFFER, room)))
  result = CachePlan(train=chosen["train"], validation=chosen["validation"],
                     shuffle_buffer=shuffle, decoded=decoded, budget=budget)
  logging.info(
      "--cache=%s: train %s decoded -> %s, validation %s -> %s, test streams; cache budget "
      "%s (%.0f%% of %s left under the %s limit of %s, %s in use%s); shuffle buffer %d "
      "examples",
      mode or "memory", _size(decoded["train"]), _where(result.train),
      _size(decoded["validation"]), _where(result.validation), _size(budget),
      100 * CACHE_SHARE, _size(available), memory.source, _size(memory.limit),
      _size(memory.used), f", {workers_on_host} workers on this host" if workers_on_host > 1 else "", shuffle)
  return result


def _where(choice):
  if choice is None:
    return "streams"
  return "memory" if choice == "memory" else f"files {choice}-*"
