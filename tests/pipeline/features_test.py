"""The writer (pure Python wire format) and the reader (tf.io) agree on every field."""

import tensorflow as tf

from pipeline import features
from tests import testdata


def test_round_trip_real_jpeg():
  path, _ = testdata.sample_files("train", ["cat"], 1)[0]
  raw = path.read_bytes()
  record = features.encode_example(key="train/cat/0000.jpg", image=raw, image_format="jpeg",
                                   height=32, width=32, label=7, coarse_label=3)
  parsed = features.parse_single(tf.constant(record))
  assert parsed[features.KEY].numpy() == b"train/cat/0000.jpg"
  assert parsed[features.IMAGE].numpy() == raw
  assert parsed[features.FORMAT].numpy() == b"jpeg"
  assert parsed[features.HEIGHT].numpy() == 32
  assert parsed[features.WIDTH].numpy() == 32
  assert parsed[features.LABEL].numpy() == 7
  assert parsed[features.COARSE_LABEL].numpy() == 3
  assert tf.io.decode_jpeg(parsed[features.IMAGE]).shape == (32, 32, 3)


def test_matches_tensorflow_serializer_and_handles_large_and_negative_ints():
  record = features.encode_example(key=b"k", image=b"\x00" * 300, image_format="png",
                                   height=70000, width=1, label=0)
  parsed = features.parse_batch(tf.constant([record, record]))
  assert parsed[features.COARSE_LABEL].numpy().tolist() == [-1, -1]
  assert parsed[features.HEIGHT].numpy().tolist() == [70000, 70000]
  # The same example built by TensorFlow's own proto classes parses identically.
  ex = tf.train.Example.FromString(record)
  assert ex.features.feature[features.IMAGE].bytes_list.value[0] == b"\x00" * 300
  assert ex.features.feature[features.COARSE_LABEL].int64_list.value[0] == -1


def test_shard_name_is_tfds_convention():
  assert features.shard_name("train", 3, 16) == "images-train.tfrecord-00003-of-00016"
  assert features.shard_name("train", 3, 16).startswith(features.shard_prefix("train"))
