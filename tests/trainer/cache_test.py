"""trainer/cache.py: what --cache decides for a real data directory and a given memory."""

import pytest

from pipeline import dataset_info
from trainer import cache
from trainer import config as config_lib
from trainer import memory as memory_lib

MIB = 2**20


@pytest.fixture(scope="module")
def info(make_data_dir):
  return dataset_info.load(make_data_dir())  # 96 train, 24 validation, 30 test at 32x32


def _plan(info, free_bytes, workers_on_host=1, **settings):
  config = config_lib.Config(data_dir=info.data_dir, model_dir="m", **settings)
  held = 500 * MIB
  return cache.plan(config, info, workers_on_host=workers_on_host,
                    memory=memory_lib.Memory(limit=held + free_bytes, source="test", used=held))


def test_decoded_size_is_the_cached_pixels_of_each_split(info):
  per_image = 32 * 32 * 3 + cache.PER_EXAMPLE_OVERHEAD
  assert cache.decoded_bytes(info, "train", None) == 96 * per_image
  assert cache.decoded_bytes(info, "train", None, num_workers=2) == 48 * per_image
  # Trained below the stored size, the cache holds the smaller images; above it, the stored.
  assert cache.decoded_bytes(info, "train", 16) == 96 * (16 * 16 * 3 + cache.PER_EXAMPLE_OVERHEAD)
  assert cache.decoded_bytes(info, "train", 96) == 96 * per_image


def test_auto_caches_what_fits_validation_first(info):
  train = cache.decoded_bytes(info, "train", None)
  validation = cache.decoded_bytes(info, "validation", None)
  everything = _plan(info, free_bytes=100 * MIB)
  assert (everything.train, everything.validation) == ("memory", "memory")
  # Budget = CACHE_SHARE of what is free: room for validation but not for train as well.
  room = int((validation + train // 2) / cache.CACHE_SHARE)
  some = _plan(info, free_bytes=room)
  assert (some.train, some.validation) == (None, "memory")
  nothing = _plan(info, free_bytes=validation)  # half of it is the budget: too small
  assert (nothing.train, nothing.validation) == (None, None)
  # Two workers on this host share its memory.
  shared = _plan(info, free_bytes=2 * room, workers_on_host=2)
  assert (shared.train, shared.validation) == (None, "memory")


def test_memory_that_cannot_fit_fails_naming_sizes_and_the_flag(info):
  need = sum(cache.decoded_bytes(info, s, None) for s in ("train", "validation"))
  # Refused exactly when auto would stream a split: the same budget.
  tight = int(need / cache.CACHE_SHARE) - 1000
  assert _plan(info, free_bytes=tight).train is None
  with pytest.raises(config_lib.ConfigError, match=r"--cache=memory: the decoded train and "
                     r"validation splits need 0 MiB \(at 32x32 px\), more than the cache "
                     r"budget of 0 MiB: 50% of the 1 MiB this process can use \(limit .* "
                     "from test, 500 MiB in use\), .*use --cache=auto or --cache=none"):
    _plan(info, free_bytes=tight, cache="memory")
  assert _plan(info, free_bytes=tight + 2000, cache="memory").train == "memory"
  assert _plan(info, free_bytes=100 * MIB, cache="").train == "memory"  # the old spelling


def test_none_and_file_prefixes(info):
  assert (_plan(info, 100 * MIB, cache="none").train, _plan(info, 100 * MIB, cache="none")
          .validation) == (None, None)
  files = _plan(info, 100 * MIB, cache="/tmp/c")
  assert (files.train, files.validation, files.for_split("test")) == ("/tmp/c", "/tmp/c", None)


def test_the_shuffle_buffer_shrinks_with_the_budget(info):
  assert _plan(info, 1024 * MIB).shuffle_buffer == 10_000  # the default cap
  assert _plan(info, 10_000, cache="none").shuffle_buffer == cache.MIN_SHUFFLE_BUFFER
  per_example = 32 * 32 * 3 + cache.PER_EXAMPLE_OVERHEAD
  middle = _plan(info, int(4_000 * per_example / cache.SHUFFLE_SHARE / cache.CACHE_SHARE),
                 cache="none")
  assert middle.shuffle_buffer == pytest.approx(4_000, abs=2)
