"""TensorFlow Datasets' metadata for a data directory, so that TFDS reads it as it is:

    builder = tfds.builder_from_directory(data_dir)
    ds = builder.as_dataset(split="train")  # {"image": {"encoded": uint8 HxWx3, ...}, "label": ...}

TFDS needs three files beside the shards, in its own formats: `dataset_info.json` (a
DatasetInfo proto as JSON: name, version, file format, and per split its shard lengths and
bytes), `features.json` (how to decode a record) and `label.labels.txt` (the class names),
and shards named `<name>-<split>.tfrecord-NNNNN-of-MMMMM` (features.shard_name). The project's
own metadata is `tfrecords_info.json` (dataset_info.py).

The features describe the records of features.py as they are stored. TFDS nests feature
names with "/", so the record key `image/encoded` is the feature `encoded` of a dict
`image`: TFDS decodes it (JPEG or PNG) to uint8 pixels and hands `image/format`,
`image/height` and `image/width` back beside it, as `image["format"]` and so on. Raw records
(--image_format=raw) are described as what they are, bytes, which TFDS hands back undecoded
(`np.frombuffer(image["encoded"], np.uint8).reshape(height, width, 3)` is the image): TFDS's
Image feature only decodes JPEG and PNG.

The files are those `tfds.folder_dataset.write_metadata` writes (it is called on a local
staging folder holding empty stand-ins for the shards, whose names it reads), then each is
copied into the data directory atomically (output_files.write_atomically), through Beam's
FileSystems for the Beam job, so `gs://` works as for the shards. tensorflow_datasets does
not import TensorFlow for this, so a Beam worker can run it.
"""

import os
import tempfile

from pipeline import features
from pipeline import output_files

VERSION = "1.0.0"
# The files write() writes into a data directory (the class names go to <feature>.labels.txt).
FILES = ("dataset_info.json", "features.json", f"{features.LABEL}.labels.txt")


def feature_connector(class_names, image_shape=None, image_format=features.SOURCE):
  """The tfds FeaturesDict of features.py's records. image_shape: (height, width, 3) when
  every image has it, else None (TFDS then leaves height and width unknown). image_format:
  what the records store (features.IMAGE_FORMATS)."""
  import numpy as np
  import tensorflow_datasets as tfds
  height, width = (image_shape[0], image_shape[1]) if image_shape else (None, None)
  image_key, image_feature = features.IMAGE.split("/")
  encoded = (tfds.features.Tensor(shape=(), dtype=np.bytes_) if image_format == features.RAW
             else tfds.features.Image(shape=(height, width, 3)))
  image = {
      image_feature: encoded,
      features.FORMAT.split("/")[1]: tfds.features.Text(),
      features.HEIGHT.split("/")[1]: tfds.features.Scalar(dtype=np.int64),
      features.WIDTH.split("/")[1]: tfds.features.Scalar(dtype=np.int64),
  }
  return tfds.features.FeaturesDict({
      features.KEY: tfds.features.Text(),
      image_key: image,
      features.LABEL: tfds.features.ClassLabel(names=list(class_names)),
      # -1 where the source has no superclass, which ClassLabel cannot hold.
      features.COARSE_LABEL: tfds.features.Scalar(dtype=np.int64),
  })


def metadata_files(class_names, image_shape, splits, *, description="",
                   image_format=features.SOURCE):
  """{file name: bytes} of TFDS's metadata. splits: {split: (shard_lengths, num_bytes)},
  shard_lengths[i] the records in shard i of features.shard_name(split, i, len)."""
  import tensorflow_datasets as tfds
  with tempfile.TemporaryDirectory(prefix="tfds-metadata-") as staging:
    for split, (lengths, _) in splits.items():
      for i in range(len(lengths)):
        open(os.path.join(staging, features.shard_name(split, i, len(lengths))), "wb").close()
    tfds.folder_dataset.write_metadata(
        data_dir=staging, features=feature_connector(class_names, image_shape, image_format),
        split_infos=[tfds.core.SplitInfo(name=split, shard_lengths=list(lengths),
                                         num_bytes=num_bytes)
                     for split, (lengths, num_bytes) in splits.items()],
        version=VERSION, filename_template=features.TFDS_FILENAME_TEMPLATE,
        check_data=False, description=description)
    written = sorted(n for n in os.listdir(staging) if os.path.getsize(os.path.join(staging, n)))
    if tuple(sorted(FILES)) != tuple(written):
      raise RuntimeError(f"tfds wrote {written}, expected {sorted(FILES)}")
    out = {}
    for name in FILES:
      with open(os.path.join(staging, name), "rb") as f:
        out[name] = f.read()
    return out


def write(data_dir, class_names, image_shape, splits, *, description="", beam=False,
          image_format=features.SOURCE):
  """Writes TFDS's metadata (metadata_files) into data_dir (local or gs://), each file
  atomically; beam: through Beam's FileSystems, else tf.io.gfile. Returns the paths."""
  paths = []
  for name, data in metadata_files(class_names, image_shape, splits, description=description,
                                   image_format=image_format).items():
    path = output_files.join(data_dir, name)
    output_files.write_atomically(path, data, beam=beam)
    paths.append(path)
  return paths
