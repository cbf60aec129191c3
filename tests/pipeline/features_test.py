"""The writer (pure Python wire format) and the reader (tf.io) agree on every field."""

import numpy as np
import pytest
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


def test_raw_round_trip_is_the_pixels_row_major_one_batch_at_a_time():
  from pipeline import images
  path, _ = testdata.sample_files("train", ["cat"], 1)[0]
  _, _, pixels, _ = images.prepare(path.read_bytes())
  encoded, image_format = images.store(pixels, features.RAW)
  assert image_format == features.RAW and len(encoded) == 32 * 32 * 3
  # Row-major (row, column, channel): byte 3 * (row * width + column) + channel.
  assert encoded[3 * (5 * 32 + 7) + 2] == pixels[5, 7, 2]
  flipped = images.store(pixels[:, ::-1], features.RAW)[0]  # a non-contiguous view
  record = features.encode_example(key="k", image=encoded, image_format=image_format,
                                   height=32, width=32, label=1)
  other = features.encode_example(key="l", image=flipped, image_format=image_format,
                                  height=32, width=32, label=2)
  parsed = features.parse_batch(tf.constant([record, other]))
  assert parsed[features.FORMAT].numpy().tolist() == [b"raw", b"raw"]
  batch = features.decode_raw_batch(parsed[features.IMAGE], 32, 32).numpy()
  assert batch.dtype == np.uint8 and batch.shape == (2, 32, 32, 3)
  np.testing.assert_array_equal(batch[0], pixels)
  np.testing.assert_array_equal(batch[1], pixels[:, ::-1])
  one = features.parse_single(tf.constant(record))
  np.testing.assert_array_equal(
      features.decode_raw(one[features.IMAGE], one[features.HEIGHT], one[features.WIDTH]),
      pixels)
  # PNG is lossless: the same pixels as the PNG record of the image.
  png, png_format = images.store(pixels, features.PNG)
  assert png_format == features.PNG
  np.testing.assert_array_equal(tf.io.decode_png(png).numpy(), batch[0])


def test_source_keeps_the_file_png_reencodes_a_jpeg_and_a_bad_format_is_refused():
  from pipeline import images
  path, _ = testdata.sample_files("train", ["cat"], 1)[0]
  data = path.read_bytes()
  assert images.prepare(data)[:2] == (data, features.JPEG)
  encoded, image_format, pixels, _ = images.prepare(data, image_format=features.PNG)
  assert image_format == features.PNG and encoded[:4] == b"\x89PNG"
  # A PNG file's own bytes are kept by png too.
  assert images.prepare(encoded, image_format=features.PNG)[:2] == (encoded, features.PNG)
  with pytest.raises(ValueError, match="image_format='webp'"):
    images.prepare(data, image_format="webp")
