"""tf.data input pipelines from the TFRecord shards that `pipeline/` writes.

    shard files (a new order each epoch) -> parallel interleave of TFRecordDataset -> batches
    of records -> parse_batch -> [keep a class subset] -> decode [-> resize down] -> [cache
    decoded uint8] -> shuffle -> repeat -> batch [-> resize up] -> augment -> prefetch

Records of raw pixels (the Beam job's --image_format=raw) of one stored size are decoded a
parse batch at a time, before the batch is split into examples: one decode_raw and one
reshape per 256 records instead of a JPEG/PNG decode call per image, which is what streaming
costs (BENCHMARKS.md, "Raw records"). Raw records that differ in size are decoded one by one
(decode_raw, reshaped by their height and width). The images are the same either way, and the
same as PNG records of the same pixels give.

Whether and where a split is cached is the caller's choice (trainer/cache.py decides it
for `--cache`): in memory, in files, or not at all, streaming from the shards every epoch.

What the pipelines yield (the model rescales its input itself):
  train: (images uint8 [B, H, W, 3], labels int32 [B]), endless, every batch full.
  eval:  (images uint8 [B, H, W, 3], labels int32 [B], weights float32 [B]), finite.
Images stay uint8 after augmentation too (resampled in float32, rounded): one dtype for
train and eval, and 4x fewer bytes per image in buffers and host-to-device copies than
float32.

Both take a `tf.distribute.InputContext`, to be called from
`strategy.distribute_datasets_from_function`, with a per-replica batch size.

Augmenting on the device instead: pass augment=None here and call
`trainer.augment.augment_batch(images, cfg, seed)` in the train step (its default "xla"
resampler compiles inside or outside a jit-compiled step).
"""

import hashlib
import math

import tensorflow as tf

from pipeline import features
from trainer import augment as augment_lib
from trainer import seeds

AUTOTUNE = tf.data.AUTOTUNE
# Records parsed per `parse_batch` call: parsing a batch amortises the per-call overhead
# of tf.io.parse_example over many small (~1-3 KB) CIFAR records.
PARSE_BATCH = 256
DEFAULT_SHUFFLE_BUFFER = 10_000  # examples; 10k CIFAR images are 30 MiB of uint8


def _pipeline_position(input_context):
  """(number of input pipelines, this pipeline's id, replicas fed by this pipeline)."""
  if input_context is None:
    return 1, 0, 1
  n = input_context.num_input_pipelines
  replicas = max(1, input_context.num_replicas_in_sync // n)
  return n, input_context.input_pipeline_id, replicas


def output_size(info, image_size=None):
  """(height, width) of the images the pipelines yield."""
  if image_size:
    if isinstance(image_size, int):
      return (image_size, image_size)
    return tuple(int(s) for s in image_size)
  if info.image_shape:
    return tuple(int(s) for s in info.image_shape[:2])
  raise ValueError(
      f"The images in {info.data_dir} differ in size (tfrecords_info.json has no image_shape); "
      "pass --image_size to resize them to one size.")


def _stored_size_is_fixed(info):
  return info.image_shape is not None


def cached_size(info, image_size=None):
  """(height, width) of the decoded images the cache (or, streaming, the shuffle buffer) holds:
  the smaller of the stored and the output size.

  Images of one fixed stored size trained larger are kept at the stored size and resized per
  batch after the cache (CIFAR resized to 224 for a transfer model holds 3 KB per image, not
  150 KB); trained smaller, they are resized before the cache (224-px records trained at 32 px
  hold 3 KB, not 150 KB). Images that differ in size are resized before they can be cached or
  batched.
  """
  size = output_size(info, image_size)
  if _stored_size_is_fixed(info):
    stored = tuple(int(s) for s in info.image_shape[:2])
    return stored if stored[0] * stored[1] <= size[0] * size[1] else size
  return size


def _resize_batch_fn(info, image_size):
  """fn(uint8 images [B, h, w, 3]) -> uint8 [B, H, W, 3] at the output size, or None when
  the cached images already have it."""
  size = output_size(info, image_size)
  if cached_size(info, image_size) == size:
    return None

  return lambda images: resize_pixels(images, size)


def decode_image(encoded):
  """Image file bytes (a scalar string tensor: JPEG, PNG, GIF's first frame, BMP, WebP) ->
  uint8 [h, w, 3], as the trainer decodes every stored record. Grayscale is repeated to
  three channels and alpha dropped. trainer/serving.py decodes served images with it too."""
  return tf.io.decode_image(encoded, channels=3, expand_animations=False)


def resize_pixels(images, size):
  """uint8 pixels [h, w, 3] or [B, h, w, 3] -> uint8 at `size` (height, width), as the
  trainer resizes: bilinear with antialiasing, rounded. Shared with trainer/serving.py, so
  that a served image is resized exactly as the training images were."""
  # antialias: downscaling without it aliases fine detail; upscaling is unaffected.
  resized = tf.image.resize(images, size, antialias=True)
  return tf.saturate_cast(tf.round(resized), tf.uint8)


def _is_raw(info):
  return info.image_format == features.RAW


def _decoder(info, image_size):
  """Returns fn(parsed example dict) -> (uint8 [h, w, 3], int32 label) at the cached size."""
  height, width = cached_size(info, image_size)
  # Resize each image when the stored sizes vary, or when one stored size is larger than the
  # cached size; else the cached images keep the stored size.
  fixed = _stored_size_is_fixed(info)
  needs_resize = not fixed or tuple(int(s) for s in info.image_shape[:2]) != (height, width)
  raw = _is_raw(info)

  def decode(example):
    if raw:
      image = features.decode_raw(example[features.IMAGE], example[features.HEIGHT],
                                  example[features.WIDTH])
    else:
      image = decode_image(example[features.IMAGE])
    if needs_resize:
      same = tf.reduce_all(tf.equal(tf.shape(image)[:2], [height, width]))
      image = tf.cond(same, lambda: image, lambda: resize_pixels(image, (height, width)))
    image = tf.ensure_shape(image, [height, width, 3])
    return image, tf.cast(example[features.LABEL], tf.int32)

  return decode


def _batch_decoder(info, image_size):
  """fn(parsed batch dict) -> (uint8 [B, h, w, 3], int32 [B]) at the cached size, for raw
  records of one stored size; None for other records (decoded one by one: _decoder)."""
  if not (_is_raw(info) and _stored_size_is_fixed(info)):
    return None
  stored = tuple(int(s) for s in info.image_shape[:2])
  size = cached_size(info, image_size)

  def decode(batch):
    images = features.decode_raw_batch(batch[features.IMAGE], *stored)
    if size != stored:  # Resized as _decoder resizes one image (the op is per image).
      images = resize_pixels(images, size)
    return images, tf.cast(batch[features.LABEL], tf.int32)

  return decode


def _class_filter(info):
  """(keep, relabel) functions on parsed examples for a class subset, or None."""
  if info.label_map is None:
    return None
  lookup = [-1] * info.num_stored_classes
  for new, old in enumerate(info.label_map):
    lookup[old] = new
  lookup = tf.constant(lookup, tf.int64)

  def keep(example):
    return tf.gather(lookup, example[features.LABEL]) >= 0

  def relabel(example):
    example = dict(example)
    example[features.LABEL] = tf.gather(lookup, example[features.LABEL])
    return example

  return keep, relabel


def _read_decoded(files, info, image_size, *, deterministic, shard=None, file_seed=None):
  """Decoded (image, label) examples from `files`, in file order when deterministic.

  `shard` = (num_shards, index) keeps every num_shards-th record from `index` on, before
  decoding, so that a pipeline decodes only its share. `file_seed`: read the files in a new
  order on each pass (matters without a cache, where every epoch reads the files again and
  the shuffle buffer alone only mixes neighbouring records).
  """
  ds = tf.data.Dataset.from_tensor_slices(list(files))
  if file_seed is not None:
    ds = ds.shuffle(len(files), seed=file_seed, reshuffle_each_iteration=True)
  # Several files read at once hides per-file latency (remote storage); in deterministic
  # mode the interleave still emits records in a fixed order.
  ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 8),
                     block_length=1 if deterministic else PARSE_BATCH,
                     num_parallel_calls=AUTOTUNE, deterministic=deterministic)
  class_filter = _class_filter(info)
  sharded = shard is not None and shard[0] > 1
  if sharded and class_filter is None:
    ds = ds.shard(*shard)  # before parsing: each pipeline parses only its share
  decode_batch = _batch_decoder(info, image_size)
  if decode_batch is not None:
    # Parsed, class-filtered and decoded a batch at a time, in one map: the examples come out
    # in the order, and with the pixels, of the per-example path below.

    def parse_and_decode(serialized):
      batch = features.parse_batch(serialized)
      if class_filter is not None:
        keep, relabel = class_filter
        mask = keep(batch)
        batch = relabel({k: tf.boolean_mask(v, mask) for k, v in batch.items()})
      return decode_batch(batch)

    ds = ds.batch(PARSE_BATCH).map(parse_and_decode, num_parallel_calls=AUTOTUNE).unbatch()
    if sharded and class_filter is not None:
      ds = ds.shard(*shard)
    return ds
  ds = ds.batch(PARSE_BATCH).map(features.parse_batch, num_parallel_calls=AUTOTUNE)
  ds = ds.unbatch()
  if class_filter is not None:
    # A class subset: drop the other classes' records, then share out what is left (the
    # subset's counts in dataset_info give every pipeline's share exactly).
    keep, relabel = class_filter
    ds = ds.filter(keep).map(relabel)
    if sharded:
      ds = ds.shard(*shard)
  return ds.map(_decoder(info, image_size), num_parallel_calls=AUTOTUNE)


MEMORY = "memory"


def _cache(ds, cache, name):
  """cache=None: no cache; "memory" (or "", its old spelling): in memory; else a file path
  prefix (one file per `name`, so train and eval, or two image sizes, never share one)."""
  if cache is None:
    return ds
  if cache in (MEMORY, ""):
    return ds.cache()
  if cache in ("auto", "none"):
    raise ValueError(f"cache={cache!r} is a --cache policy; trainer/cache.py resolves it "
                     "to None, 'memory' or a file prefix per split")
  return ds.cache(f"{cache}-{name}")


def _cache_name(split, info, height, width, pipeline_id, num_pipelines):
  """One cache file per split, cached size, class subset and pipeline: never shared."""
  classes = ""
  if info.label_map is not None:
    classes = "-c" + hashlib.sha1(repr(info.label_map).encode()).hexdigest()[:8]
  return f"{split}-{height}x{width}{classes}-{pipeline_id}of{num_pipelines}"


def _options(deterministic):
  options = tf.data.Options()
  # Train: by default parallel stages hand out elements as soon as they are ready (the
  # shuffle makes order moot). Eval: fixed order so that runs and workers agree.
  options.deterministic = deterministic
  # Sharding is done here by file or by element; keep tf.distribute from re-sharding.
  options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
  return options


def train_dataset(info, *, batch_size, input_context=None, seed=0, augment=None, cache=MEMORY,
                  image_size=None, shuffle_buffer=DEFAULT_SHUFFLE_BUFFER, deterministic=False,
                  service_job=False):
  """Endless training batches for one input pipeline, or for a tf.data service job.

  Args:
    info: pipeline.dataset_info.DatasetInfo of the data directory.
    batch_size: examples per batch, per replica
      (`input_context.get_per_replica_batch_size(global_batch_size)`).
    input_context: tf.distribute.InputContext or None. With several input pipelines each
      reads a disjoint share of the shard files: files[id::num_input_pipelines].
    seed: int; seeds the shuffle and the augmentation draws (per pipeline and batch).
    augment: trainer.augment.AugmentConfig or None (no augmentation).
    cache: "memory" caches decoded images in memory, a path caches them in files with that
      prefix, None does not cache (streams the shards every epoch: data larger than memory).
    image_size: int or (height, width) to resize to; required when the images differ.
    shuffle_buffer: examples held for shuffling (capped at the examples in the share).
    deterministic: bool; False lets parallel stages hand out files, examples and batches as
      they are ready (so a batch of the next epoch may come before the last of this one).
      True fixes the order, so that one seed gives the same batches every run; in steady
      state it is as fast (BENCHMARKS.md, `tools.bench_input --deterministic`).
    service_job: bool; the dataset that trainer/data_service.py sends to tf.data service
      workers: the same for every input pipeline (all the train files, one seed), as the
      pipelines share one job; never cached (`cache` must be None).

  Yields (images uint8 [batch_size, H, W, 3], labels int32 [batch_size]).
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  files = list(info.split("train").shards)
  if not files:
    raise ValueError(f"The train split of {info.data_dir} has no shard files.")
  num_pipelines, pipeline_id, _ = _pipeline_position(input_context)
  if service_job:
    if cache is not None:
      raise ValueError("a tf.data service job is not cached: its workers are dealt different "
                       "files each pass (pass cache=None)")
    # One dataset for all pipelines: the service deals the job's batches out among them.
    num_pipelines, pipeline_id = 1, 0
  if num_pipelines > 1:
    if len(files) < num_pipelines:
      raise ValueError(
          f"The train split of {info.data_dir} has {len(files)} shard files but there are "
          f"{num_pipelines} input pipelines (workers); each needs at least one file. "
          f"Rebuild the data with at least {num_pipelines} train shards (ideally 10x as "
          "many).")
    files = files[pipeline_id::num_pipelines]
  height, width = cached_size(info, image_size)
  # Pipelines hold different data: a stream of their own each.
  pipeline_seed = seeds.derive(seed, seeds.INPUT_PIPELINE, pipeline_id)
  ds = _read_decoded(files, info, image_size, deterministic=deterministic,
                     file_seed=pipeline_seed)
  ds = _cache(ds, cache, _cache_name("train", info, height, width, pipeline_id,
                                     num_pipelines))
  # Shuffle after the cache (else every epoch replays the first one's order) and before
  # repeat (so each epoch is a full pass before the next starts).
  num_examples = max(1, info.split("train").num_examples // num_pipelines)
  buffer = max(1, min(shuffle_buffer, num_examples))
  ds = ds.shuffle(buffer, seed=pipeline_seed, reshuffle_each_iteration=True)
  ds = ds.repeat()
  # Full batches only: replicas must agree on batch shapes, and XLA compiles one shape.
  ds = ds.batch(batch_size, drop_remainder=True, num_parallel_calls=AUTOTUNE)
  resize = _resize_batch_fn(info, image_size)
  if resize is not None:
    ds = ds.map(lambda images, labels: (resize(images), labels), num_parallel_calls=AUTOTUNE)
  if augment is not None and augment.enabled:
    base_seed = tf.constant([seed, pipeline_id], tf.int64)

    def augment_with_seed(step, batch):
      images, labels = batch
      batch_seed = tf.random.experimental.stateless_fold_in(base_seed, step,
                                                            alg=augment_lib.RNG_ALG)
      # And by its first image: tf.data service workers (service_job) each number their
      # batches from 0, and must not share one set of draws. Done here too, so that one
      # seed gives the same batches with the service as without it.
      first = tf.bitcast(tf.fingerprint(images[:1])[0], tf.int64)
      batch_seed = tf.random.experimental.stateless_fold_in(batch_seed, first,
                                                            alg=augment_lib.RNG_ALG)
      return augment_lib.augment_batch(images, augment, seed=batch_seed), labels

    # Each batch's draws depend only on (seed, pipeline, batch number, its first image):
    # reproducible.
    ds = ds.enumerate().map(augment_with_seed, num_parallel_calls=AUTOTUNE)
  ds = ds.prefetch(AUTOTUNE)
  return ds.with_options(_options(deterministic=deterministic))


def eval_steps(num_examples, *, batch_size, num_pipelines=1, replicas_per_pipeline=1):
  """Global steps so that each pipeline's share plus one padding example fits in
  steps * replicas batches.

  Why the one padding example: the cache only keeps what it wrote once its input has run to
  the end, and `take` stops without asking for more when the real examples fill the last
  batch exactly; a pad always comes after them, so every pass reads the split to its end.
  """
  per_pipeline = math.ceil(num_examples / num_pipelines) + 1
  return math.ceil(per_pipeline / (replicas_per_pipeline * batch_size))


def eval_dataset(info, split, *, batch_size, input_context=None, image_size=None,
                 cache=MEMORY):
  """A finite, deterministic, never augmented pass over `split` for one input pipeline.

  Each pipeline takes every num_input_pipelines-th example (by index, from its id) and
  pads its share with weight-0 examples to exactly `steps * replicas` full batches, so that
  all workers run the same number of steps (collectives hang otherwise). Weighted metrics,
  sum(w * x) / sum(w), then count every real example exactly once.

  Returns (dataset of (images uint8 [B, H, W, 3], labels int32 [B], weights float32 [B]),
  steps), where `steps` is the number of global steps (batches per replica) in one pass.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  split_info = info.split(split)
  num_pipelines, pipeline_id, replicas = _pipeline_position(input_context)
  steps = eval_steps(split_info.num_examples, batch_size=batch_size,
                     num_pipelines=num_pipelines, replicas_per_pipeline=replicas)
  total = steps * replicas * batch_size  # examples this pipeline yields, padding included
  height, width = cached_size(info, image_size)
  if not split_info.shards:
    raise ValueError(f"The {split} split of {info.data_dir} has no shard files.")
  ds = _read_decoded(split_info.shards, info, image_size, deterministic=True,
                     shard=(num_pipelines, pipeline_id))
  # This pipeline's share of the records: indices pipeline_id, pipeline_id + n, ...
  share = len(range(pipeline_id, split_info.num_examples, num_pipelines))

  def weight_one(index, example):
    # More records than the metadata counts would be cut by `take` below: fail instead.
    check = tf.debugging.assert_less(
        index, tf.constant(share, tf.int64),
        message=f"the {split} shards hold more records than the {split_info.num_examples} "
                f"that the metadata of {info.data_dir} (tfrecords_info.json) says")
    with tf.control_dependencies([check]):
      return example[0], example[1], tf.constant(1.0)

  ds = ds.enumerate().map(weight_one)
  ds = _cache(ds, cache, _cache_name(split, info, height, width, pipeline_id, num_pipelines))
  padding = tf.data.Dataset.from_tensors(
      (tf.zeros([height, width, 3], tf.uint8), tf.constant(0, tf.int32), tf.constant(0.0)))
  # Endless padding then `take`: the count is exact even if the shards hold a different
  # number of records than the metadata says (more would be cut, so check below).
  ds = ds.concatenate(padding.repeat()).take(total)
  ds = ds.batch(batch_size, drop_remainder=True)
  resize = _resize_batch_fn(info, image_size)
  if resize is not None:
    ds = ds.map(lambda images, labels, weights: (resize(images), labels, weights),
                num_parallel_calls=AUTOTUNE)
  ds = ds.prefetch(AUTOTUNE)
  return ds.with_options(_options(deterministic=True)), steps


def steps_per_epoch(info, global_batch_size):
  """Train steps in one pass over the train split (at least 1)."""
  num_examples = info.split("train").num_examples
  if num_examples <= 0:
    raise ValueError(f"The train split of {info.data_dir} is empty (tfrecords_info.json "
                     "says 0 examples); nothing to train on.")
  if global_batch_size < 1:
    raise ValueError(f"global batch size must be >= 1, got {global_batch_size}")
  return max(1, num_examples // global_batch_size)
