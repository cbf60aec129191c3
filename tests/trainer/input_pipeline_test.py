"""trainer/input_pipeline.py on real TFRecords (the shipped CIFAR-10 JPEGs)."""

import collections
import dataclasses
import glob
import itertools
import os

import numpy as np
import pytest
import tensorflow as tf

from pipeline import dataset_info
from pipeline import features
from trainer import augment
from trainer import input_pipeline

# 3 classes x 10 sample images: train 24 / validation 6 (every 5th) / test 30, 2 shards each.
NUM_TRAIN, NUM_TEST = 24, 30


@pytest.fixture(scope="module")
def info(make_data_dir):
  return dataset_info.load(make_data_dir(per_class=10, num_shards=2))


def _records(files):
  """[(image bytes, label)] decoded straight from the shards, in file order."""
  out = []
  for f in files:
    for record in tf.data.TFRecordDataset(f):
      example = features.parse_single(record)
      image = tf.io.decode_image(example[features.IMAGE], channels=3, expand_animations=False)
      out.append((image.numpy().tobytes(), int(example[features.LABEL])))
  return out


def _examples(images, labels):
  return [(i.tobytes(), int(l)) for i, l in zip(images, labels)]


def _first_batch(ds):
  images, labels = next(iter(ds))
  return images.numpy(), labels.numpy()


def test_train_yields_uint8_images_and_int32_labels_of_one_epoch(info):
  # One batch of the whole split is exactly the first epoch (shuffle comes before repeat).
  ds = input_pipeline.train_dataset(info, batch_size=NUM_TRAIN)
  assert ds.element_spec == (tf.TensorSpec([NUM_TRAIN, 32, 32, 3], tf.uint8),
                             tf.TensorSpec([NUM_TRAIN], tf.int32))
  images, labels = _first_batch(ds)
  assert set(labels) <= set(range(info.num_classes))
  records = _records(info.split("train").shards)
  assert collections.Counter(_examples(images, labels)) == collections.Counter(records)


def test_train_is_endless_reshuffled_and_full_batches(info):
  ds = input_pipeline.train_dataset(info, batch_size=5, seed=1)
  batches = list(ds.take(12).as_numpy_iterator())  # 60 examples: 2.5 epochs
  assert all(images.shape[0] == 5 for images, _ in batches)
  order = [l for _, labels in batches for l in labels]
  assert order[:NUM_TRAIN] != order[NUM_TRAIN:2 * NUM_TRAIN]


def test_deterministic_train_batches_repeat_exactly_and_keep_epochs_apart(info):
  # Augmented, so the per-batch augmentation seeds are checked too. 30 batches of 4 read
  # the split 5 times; in order, each run of NUM_TRAIN examples is one whole epoch.
  def batches():
    ds = input_pipeline.train_dataset(info, batch_size=4, seed=2, deterministic=True,
                                      augment=augment.AugmentConfig())
    return list(ds.take(5 * NUM_TRAIN // 4).as_numpy_iterator())

  first, second = batches(), batches()
  for (images_1, labels_1), (images_2, labels_2) in zip(first, second):
    np.testing.assert_array_equal(images_1, images_2)
    np.testing.assert_array_equal(labels_1, labels_2)
  labels = np.concatenate([labels for _, labels in first])
  plain = collections.Counter(l for _, l in _records(info.split("train").shards))
  for epoch in range(5):
    assert collections.Counter(labels[epoch * NUM_TRAIN:(epoch + 1) * NUM_TRAIN]) == plain


def test_augmentation_changes_train_images_not_labels(info):
  plain = _records(info.split("train").shards)
  ds = input_pipeline.train_dataset(info, batch_size=NUM_TRAIN, seed=3,
                                    augment=augment.AugmentConfig())
  assert ds.element_spec[0].dtype == tf.uint8
  images, labels = _first_batch(ds)
  assert collections.Counter(labels.tolist()) == collections.Counter(l for _, l in plain)
  unchanged = set(_examples(images, labels)) & set(plain)
  assert len(unchanged) <= 2  # a draw near identity could leave an image as it was
  # AugmentConfig.none() is the same as no augmentation.
  ds = input_pipeline.train_dataset(info, batch_size=NUM_TRAIN,
                                    augment=augment.AugmentConfig.none())
  assert collections.Counter(_examples(*_first_batch(ds))) == collections.Counter(plain)


def _eval_pass(info, split, batch_size, context=None):
  ds, steps = input_pipeline.eval_dataset(info, split, batch_size=batch_size,
                                          input_context=context)
  batches = list(ds.as_numpy_iterator())
  images = np.concatenate([b[0] for b in batches])
  labels = np.concatenate([b[1] for b in batches])
  weights = np.concatenate([b[2] for b in batches])
  assert all(b[0].shape[0] == batch_size for b in batches)
  return len(batches), steps, images, labels, weights


def test_eval_is_every_record_once_byte_identical_in_order_plus_weight_zero_padding(info):
  num_batches, steps, images, labels, weights = _eval_pass(info, "test", 8)
  assert (steps, num_batches) == (4, 4)  # 30 examples in batches of 8
  assert labels.dtype == np.int32 and weights.dtype == np.float32
  np.testing.assert_array_equal(weights, [1.0] * NUM_TEST + [0.0] * 2)
  # Round robin over the 2 shards restores the order the writer dealt records in.
  first, second = (_records([f]) for f in info.split("test").shards)
  in_order = [r for pair in itertools.zip_longest(first, second) for r in pair if r]
  assert _examples(images[:NUM_TEST], labels[:NUM_TEST]) == in_order
  ds, _ = input_pipeline.eval_dataset(info, "test", batch_size=8)
  again = np.concatenate([b[0] for b in ds.as_numpy_iterator()])
  np.testing.assert_array_equal(again, images)  # deterministic


@pytest.mark.parametrize("pipelines,replicas", [(2, 2), (1, 2), (2, 4)])
def test_eval_shards_by_element_and_every_pipeline_takes_the_same_steps(
    info, pipelines, replicas):
  batch_size = 4
  seen, counts = [], set()
  for i in range(pipelines):
    context = tf.distribute.InputContext(num_input_pipelines=pipelines, input_pipeline_id=i,
                                         num_replicas_in_sync=replicas)
    num_batches, steps, images, labels, weights = _eval_pass(info, "test", batch_size,
                                                             context)
    assert num_batches == steps * (replicas // pipelines)
    assert steps * replicas * batch_size >= NUM_TEST
    counts.add(num_batches)
    assert set(weights) <= {0.0, 1.0}
    real = weights == 1.0
    assert real[:real.sum()].all()  # real examples first, then padding
    seen += _examples(images[real], labels[real])
  assert len(counts) == 1
  records = _records(info.split("test").shards)
  assert collections.Counter(seen) == collections.Counter(records)  # each exactly once


def test_eval_fails_loudly_when_shards_hold_more_records_than_counted(info):
  splits = dict(info.splits)
  splits["test"] = dataclasses.replace(splits["test"], num_examples=NUM_TEST - 3)
  short = dataclasses.replace(info, splits=splits)
  ds, _ = input_pipeline.eval_dataset(short, "test", batch_size=8)
  with pytest.raises(tf.errors.InvalidArgumentError, match="more records"):
    list(ds)


def test_train_shards_by_file_into_disjoint_shares(info):
  shares = []
  for i in range(2):
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i,
                                         num_replicas_in_sync=2)
    # Each share is one of the 2 files, NUM_TRAIN / 2 records: one batch is one epoch.
    ds = input_pipeline.train_dataset(info, batch_size=NUM_TRAIN // 2, input_context=context)
    shares.append(collections.Counter(_examples(*_first_batch(ds))))
    assert shares[-1] == collections.Counter(_records(info.split("train").shards[i::2]))
  assert not set(shares[0]) & set(shares[1])
  assert shares[0] + shares[1] == collections.Counter(_records(info.split("train").shards))


def test_fewer_shards_than_input_pipelines_is_a_clear_error(info):
  context = tf.distribute.InputContext(num_input_pipelines=3, input_pipeline_id=0,
                                       num_replicas_in_sync=3)
  with pytest.raises(ValueError, match=r"2 shard files but there are 3 input pipelines"):
    input_pipeline.train_dataset(info, batch_size=4, input_context=context)


def test_file_cache_is_written_and_read_back(info, tmp_path):
  prefix = str(tmp_path / "cache")
  ds = input_pipeline.train_dataset(info, batch_size=NUM_TRAIN, cache=prefix)
  first, second = [collections.Counter(_examples(i, l))
                   for i, l in ds.take(2).as_numpy_iterator()]
  assert first == second  # the second epoch comes from the finished cache
  assert glob.glob(prefix + "-train-32x32-0of1*.index")
  # 6 examples in batches of 3 fill 2 batches exactly: the cache must still be completed.
  ds, steps = input_pipeline.eval_dataset(info, "validation", batch_size=3, cache=prefix)
  assert len(list(ds)) == steps == 3  # the pad that lets the cache see the end costs a step
  assert glob.glob(prefix + "-validation-32x32-0of1*.index")


def test_without_a_cache_every_epoch_reads_every_record(info):
  ds = input_pipeline.train_dataset(info, batch_size=NUM_TRAIN, cache=None)
  records = collections.Counter(_records(info.split("train").shards))
  for images, labels in ds.take(2).as_numpy_iterator():
    assert collections.Counter(_examples(images, labels)) == records


def test_image_size_resizes_and_is_required_when_sizes_differ(info):
  mixed = dataclasses.replace(info, image_shape=None)
  with pytest.raises(ValueError, match="--image_size"):
    input_pipeline.train_dataset(mixed, batch_size=4)
  with pytest.raises(ValueError, match="--image_size"):
    input_pipeline.eval_dataset(mixed, "test", batch_size=4)
  ds = input_pipeline.train_dataset(mixed, batch_size=4, image_size=20,
                                    augment=augment.AugmentConfig())
  images, _ = _first_batch(ds)
  assert images.shape == (4, 20, 20, 3) and images.dtype == np.uint8
  ds, _ = input_pipeline.eval_dataset(info, "test", batch_size=4, image_size=(24, 16))
  assert ds.element_spec[0].shape == (4, 24, 16, 3)
  # At the data's own size nothing is resampled.
  _, _, images, labels, weights = _eval_pass(info, "test", 8)
  ds, _ = input_pipeline.eval_dataset(mixed, "test", batch_size=8, image_size=32)
  np.testing.assert_array_equal(np.concatenate([b[0] for b in ds.as_numpy_iterator()]),
                                images)


def test_trained_below_the_stored_size_images_are_cached_resized(info, tmp_path):
  """--image_size below the stored size resizes before the cache (the cache holds the small
  images: a quarter of the bytes at half the side), with the same pixels as resizing each
  stored image; above it, the cache keeps the stored size and batches are resized after."""
  assert input_pipeline.cached_size(info, 16) == (16, 16)
  assert input_pipeline.cached_size(info, 64) == (32, 32)
  sizes = {}
  for side in (16, 32):
    prefix = str(tmp_path / f"c{side}")
    ds, _ = input_pipeline.eval_dataset(info, "test", batch_size=8, image_size=side,
                                        cache=prefix)
    batches = list(ds.as_numpy_iterator())
    sizes[side] = sum(os.path.getsize(f) for f in glob.glob(prefix + "*"))
    if side == 16:
      small = np.concatenate([b[0] for b in batches])[np.concatenate([b[2] for b in batches]) > 0]
  assert sizes[16] < 0.35 * sizes[32], sizes
  _, _, stored, _, weights = _eval_pass(info, "test", 8)
  stored = stored[weights > 0]
  expected = tf.saturate_cast(tf.round(tf.image.resize(stored, (16, 16), antialias=True)),
                              tf.uint8).numpy()
  np.testing.assert_array_equal(small, expected)
  ds, _ = input_pipeline.eval_dataset(info, "test", batch_size=8, image_size=64)
  assert ds.element_spec[0].shape == (8, 64, 64, 3)


def test_steps_per_epoch(info):
  assert input_pipeline.steps_per_epoch(info, 8) == 3
  assert input_pipeline.steps_per_epoch(info, 10) == 2
  assert input_pipeline.steps_per_epoch(info, 1000) == 1
  splits = dict(info.splits)
  splits["train"] = dataclasses.replace(splits["train"], num_examples=0)
  with pytest.raises(ValueError, match="empty"):
    input_pipeline.steps_per_epoch(dataclasses.replace(info, splits=splits), 8)


# --- raw records (the Beam job's --image_format=raw) ------------------------------------------


@pytest.fixture(scope="module")
def png_and_raw(make_data_dir):
  """The same pixels stored as PNG and as raw records (lossless both: the images must agree
  to the byte)."""
  return tuple(dataset_info.load(make_data_dir(per_class=10, num_shards=2, image_format=f))
               for f in (features.PNG, features.RAW))


def _take(ds, n):
  return [tuple(np.asarray(t) for t in b) for b in ds.take(n).as_numpy_iterator()]


def _assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    for u, v in zip(x, y):
      assert u.dtype == v.dtype
      np.testing.assert_array_equal(u, v)


def test_raw_records_are_read_a_batch_at_a_time_into_the_png_records_images(png_and_raw):
  png, raw = png_and_raw
  assert (png.image_format, raw.image_format) == ("png", "raw")
  formats = {features.parse_single(r)[features.FORMAT].numpy()
             for r in tf.data.TFRecordDataset(list(raw.split("train").shards))}
  assert formats == {b"raw"}
  # Deterministic train batches, augmented: the same for one seed whatever the format. The
  # cached size below the stored one resizes a whole parse batch at once, above it after
  # the batching; cache=None streams (the path the raw format is for).
  for image_size, cache in ((None, None), (16, None), (48, "memory")):
    batches = [
        _take(input_pipeline.train_dataset(info, batch_size=5, seed=4, deterministic=True,
                                           augment=augment.AugmentConfig(), cache=cache,
                                           image_size=image_size), 12)
        for info in (png, raw)]
    _assert_same_batches(*batches)
    assert batches[1][0][0].shape[1:3] == (image_size or 32,) * 2
  plain = [_take(input_pipeline.train_dataset(info, batch_size=NUM_TRAIN, seed=4,
                                              deterministic=True, cache=None), 2)
           for info in (png, raw)]
  _assert_same_batches(*plain)
  # An epoch is every record once, as decoded from the PNG shards.
  assert collections.Counter(_examples(*plain[1][0])) == collections.Counter(
      _records(png.split("train").shards))


@pytest.mark.parametrize("pipelines", [1, 2])
def test_raw_eval_passes_and_class_subsets_are_the_png_ones(png_and_raw, pipelines):
  for subset in (None, (2, 0)):
    passes = []
    for info in png_and_raw:
      if subset:
        info = info.subset(subset)
      for i in range(pipelines):
        context = tf.distribute.InputContext(num_input_pipelines=pipelines,
                                             input_pipeline_id=i,
                                             num_replicas_in_sync=pipelines)
        for image_size in (None, 16):
          ds, steps = input_pipeline.eval_dataset(info, "test", batch_size=4,
                                                  input_context=context, image_size=image_size)
          passes.append((steps, list(ds.as_numpy_iterator())))
    half = len(passes) // 2
    for (steps_png, png), (steps_raw, raw) in zip(passes[:half], passes[half:]):
      assert steps_png == steps_raw
      _assert_same_batches(png, raw)
    labels = np.concatenate([b[1][b[2] > 0] for _, batches in passes[half:]
                             for b in batches])
    assert set(labels) == ({0, 1} if subset else {0, 1, 2})


def test_raw_records_of_varying_size_are_decoded_one_by_one_by_their_height_and_width(
    png_and_raw):
  # Without one stored size the trainer decodes each raw record by its own height and width.
  png, raw = (dataclasses.replace(info, image_shape=None) for info in png_and_raw)
  passes = [list(input_pipeline.eval_dataset(info, "test", batch_size=8, image_size=s)[0]
                 .as_numpy_iterator()) for s in (32, 20) for info in (png, raw)]
  _assert_same_batches(passes[0], passes[1])
  _assert_same_batches(passes[2], passes[3])
  # A record whose bytes are not height * width * 3 fails, not silently misreads.
  record = features.encode_example(key="k", image=b"\x00" * 100, image_format="raw",
                                   height=32, width=32, label=0)
  parsed = features.parse_single(tf.constant(record))
  with pytest.raises(tf.errors.InvalidArgumentError):
    features.decode_raw(parsed[features.IMAGE], parsed[features.HEIGHT],
                        parsed[features.WIDTH])
