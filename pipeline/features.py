"""The one TFRecord schema: feature keys, the writer's encoder, the reader's parser.

Every record in a shard is a serialized `tf.train.Example` with these features:

  key                 bytes   stable id of the example (source-specific, unique)
  image/encoded       bytes   by the Beam job's --image_format (IMAGE_FORMATS below):
                              source (the default): the original file bytes (JPEG/PNG)
                                when no resize or conversion was needed, else PNG (lossless;
                                also for sources that hand over pixels);
                              png: PNG always;
                              raw: the uint8 pixels, height * width * 3 bytes, row-major
                                (row, column, RGB): no decoding, so the reader can turn a
                                whole batch of records into pixels with one decode_raw
  image/format        bytes   "jpeg", "png" or "raw"
  image/height        int64   pixels
  image/width         int64   pixels
  label               int64   0..num_classes-1, index into tfrecords_info.json class_names
  coarse_label        int64   CIFAR-100 superclass index, or -1 where the source has none

The writer side (`encode_example`) is pure Python so that Beam workers never import
TensorFlow (3-4 s and ~600 MB a process); it writes the protobuf wire format directly.
The reader side (`parse_batch`) is TensorFlow. `tests/pipeline/features_test.py` checks
that the two agree.
"""


KEY = "key"
IMAGE = "image/encoded"
FORMAT = "image/format"
HEIGHT = "image/height"
WIDTH = "image/width"
LABEL = "label"
COARSE_LABEL = "coarse_label"

NO_COARSE_LABEL = -1

# Values of image/format.
JPEG = "jpeg"
PNG = "png"
RAW = "raw"
# What the Beam job's --image_format chooses to store (and tfrecords_info.json's
# image_format says): SOURCE keeps JPEG/PNG files as they are, PNG and RAW make every
# record that format.
SOURCE = "source"
IMAGE_FORMATS = (SOURCE, PNG, RAW)

# File names inside a data directory.
INFO_FILE = "tfrecords_info.json"  # this project's metadata (dataset_info.py)
# Its name in directories written before 2026-12-02, still read; TFDS's own metadata has
# that name now (tfds_metadata.py).
LEGACY_INFO_FILE = "dataset_info.json"
REJECTED_FILE = "rejected.csv"
SPLITS = ("train", "validation", "test")

# Shards are named as TensorFlow Datasets names them, so that tfds.builder_from_directory
# reads a data directory as it is: `<name>-<split>.tfrecord-NNNNN-of-MMMMM`.
TFDS_NAME = "images"
TFDS_FILENAME_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"


def shard_prefix(split):
  """`images-train.tfrecord-`: what every shard name of `split` starts with."""
  return f"{TFDS_NAME}-{split}.tfrecord-"


def shard_name(split, index, num_shards):
  """`images-train.tfrecord-00003-of-00016`: the one place shard names are spelled
  (directories written before 2026-12-02 have `train-00003-of-00016.tfrecord`; readers take
  the names their metadata lists)."""
  return f"{shard_prefix(split)}{index:05d}-of-{num_shards:05d}"


# --- writer: protobuf wire format by hand -------------------------------------------------
# Example  { Features features = 1; }
# Features { map<string, Feature> feature = 1; }   (map entry: key = 1, value = 2)
# Feature  { oneof { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
# BytesList { repeated bytes value = 1; }   Int64List { repeated int64 value = 1 [packed]; }


def _varint(value):
  if value < 0:  # int64 negatives are encoded as their 64-bit two's complement.
    value += 1 << 64
  out = bytearray()
  while True:
    byte = value & 0x7F
    value >>= 7
    if value:
      out.append(byte | 0x80)
    else:
      out.append(byte)
      return bytes(out)


def _field(number, payload):
  """A length-delimited field (wire type 2)."""
  return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def _bytes_feature(value):
  return _field(1, _field(1, value))


def _int64_feature(value):
  return _field(3, _field(1, _varint(int(value))))


def _entry(name, feature):
  return _field(1, _field(1, name.encode()) + _field(2, feature))


def encode_example(*, key, image, image_format, height, width, label,
                   coarse_label=NO_COARSE_LABEL):
  """Returns the serialized tf.train.Example for one image (bytes)."""
  if isinstance(key, str):
    key = key.encode()
  features = b"".join([
      _entry(KEY, _bytes_feature(key)),
      _entry(IMAGE, _bytes_feature(image)),
      _entry(FORMAT, _bytes_feature(image_format.encode())),
      _entry(HEIGHT, _int64_feature(height)),
      _entry(WIDTH, _int64_feature(width)),
      _entry(LABEL, _int64_feature(label)),
      _entry(COARSE_LABEL, _int64_feature(coarse_label)),
  ])
  return _field(1, features)


# --- reader -------------------------------------------------------------------------------


def feature_spec():
  """The tf.io parsing spec for the schema above."""
  import tensorflow as tf  # Only the reader needs TensorFlow.
  return {
      KEY: tf.io.FixedLenFeature([], tf.string),
      IMAGE: tf.io.FixedLenFeature([], tf.string),
      FORMAT: tf.io.FixedLenFeature([], tf.string),
      HEIGHT: tf.io.FixedLenFeature([], tf.int64),
      WIDTH: tf.io.FixedLenFeature([], tf.int64),
      LABEL: tf.io.FixedLenFeature([], tf.int64),
      COARSE_LABEL: tf.io.FixedLenFeature([], tf.int64, default_value=NO_COARSE_LABEL),
  }


def parse_batch(serialized):
  """Parses a batch (1-D string tensor) of serialized examples into a dict of tensors."""
  import tensorflow as tf
  return tf.io.parse_example(serialized, feature_spec())


def parse_single(serialized):
  """Parses one serialized example (scalar string tensor)."""
  import tensorflow as tf
  return tf.io.parse_single_example(serialized, feature_spec())


def raw_pixels(pixels):
  """uint8 [H, W, 3] pixels -> the image/encoded bytes of a raw record."""
  return pixels.tobytes(order="C")


def decode_raw(encoded, height, width):
  """A raw record's image/encoded (scalar string tensor) -> uint8 [height, width, 3]. A byte
  count other than height * width * 3 fails the reshape (pipeline/verify.py names it)."""
  import tensorflow as tf
  return tf.reshape(tf.io.decode_raw(encoded, tf.uint8), tf.stack([height, width, 3]))


def decode_raw_batch(encoded, height, width):
  """image/encoded of a batch of raw records ([B] string tensor), every image height x width
  -> uint8 [B, height, width, 3], in one op for the whole batch (no per-image call)."""
  import tensorflow as tf
  # decode_raw of a [B] tensor is [B, bytes]; it fails if the records differ in length.
  return tf.reshape(tf.io.decode_raw(encoded, tf.uint8), [-1, height, width, 3])
