"""Small real inputs for tests: the shipped CIFAR-10 JPEG sample, written into TFRecords.

`write_data_dir` writes a data directory in the exact format the Beam job writes (same schema
module, same tfrecords_info.json), from real JPEG bytes, without running Beam, so that trainer
tests do not pay Beam's start-up. The Beam job itself is tested in tests/pipeline/.
"""

import os
import pathlib
import re

from pipeline import dataset_info
from pipeline import features

REPO = pathlib.Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO / "pipeline" / "sample_data" / "cifar10"
SAMPLE_CSV = REPO / "pipeline" / "sample_data" / "cifar10.csv"
# ../shared/data beside the checkout (read-only; absent on a user's machine).
SHARED_DATA = REPO.parent / "shared" / "data"
CIFAR100_META = SHARED_DATA / "cifar100-meta" / "meta"


def sample_files(split="train", classes=None, per_class=None):
  """[(path, class_name)] of the shipped sample, sorted, optionally limited."""
  out = []
  for class_dir in sorted((SAMPLE_DIR / split).iterdir()):
    if classes is not None and class_dir.name not in classes:
      continue
    files = sorted(class_dir.glob("*.jpg"))[:per_class]
    out.extend((f, class_dir.name) for f in files)
  return out


def write_data_dir(out_dir, *, classes=("airplane", "automobile", "bird"),
                   per_class=None, num_shards=2, validation_every=5, image_size=None,
                   image_format=None):
  """Writes TFRecords + tfrecords_info.json from the sample's real JPEGs.

  Train images go to `train`, except every `validation_every`-th one, which goes to
  `validation`; the sample's test images go to `test`. image_size: px to store them at,
  resized by pipeline.images.prepare (PNG, as the Beam job's --image_size); None: the
  32-px JPEGs as they are. image_format: "png" or "raw" stores every image so, from the
  pixels pipeline.images.prepare decodes (as the Beam job's --image_format); None: as
  above. Returns the loaded DatasetInfo.
  """
  import tensorflow as tf
  from pipeline import images
  out_dir = str(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  examples = {"train": [], "validation": [], "test": []}
  for split in ("train", "test"):
    for i, (path, name) in enumerate(sample_files(split, classes, per_class)):
      target = split
      if split == "train" and i % validation_every == validation_every - 1:
        target = "validation"
      label = classes.index(name)
      data, size = path.read_bytes(), image_size or 32
      if image_size or image_format:
        data, stored_format, _, _ = images.prepare(data, (size, size),
                                                   image_format or features.SOURCE)
      else:
        stored_format = features.JPEG
      examples[target].append(features.encode_example(
          key=f"{split}/{name}/{path.name}", image=data, image_format=stored_format,
          height=size, width=size, label=label))
  splits = {}
  for split, records in examples.items():
    shards = [features.shard_name(split, i, num_shards) for i in range(num_shards)]
    for i, shard in enumerate(shards):
      with tf.io.TFRecordWriter(os.path.join(out_dir, shard)) as w:
        for record in records[i::num_shards]:
          w.write(record)
    per_class_counts = [0] * len(classes)
    for r in records:
      per_class_counts[int(features.parse_single(r)[features.LABEL])] += 1
    splits[split] = dataset_info.split_info(out_dir, shards, per_class_counts)
  dataset_info.write(dataset_info.DatasetInfo(
      data_dir=out_dir, class_names=tuple(classes), splits=splits,
      image_shape=(image_size or 32, image_size or 32, 3),
      image_format=image_format or features.SOURCE,
      source=f"tests.testdata:{SAMPLE_DIR}", command="tests.testdata.write_data_dir"))
  return dataset_info.load(out_dir)


def latest_checkpoint_epoch(model_dir):
  """Epoch of the trainer's latest full checkpoint in model_dir (0 if none), read from the
  checkpoint state file without TensorFlow, so tests can poll a running trainer cheaply."""
  state = os.path.join(model_dir, "checkpoints", "checkpoint")
  if not os.path.exists(state):
    return 0
  with open(state) as f:
    return int(re.search(r'model_checkpoint_path: "ckpt-(\d+)"', f.read()).group(1))


CIFAR10_TARBALL = SHARED_DATA / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"


def extract_cifar10(dest, *, train_per_class, test_per_class):
  """Extracts the first N JPEGs of each class of the real CIFAR-10 tarball in ../shared/data
  into dest/{train,test}/<class>/ (an image_dir tree); returns dest. Callers skip without it."""
  import tarfile
  limits = {"train": train_per_class, "test": test_per_class}
  with tarfile.open(CIFAR10_TARBALL) as tar:
    for member in tar:
      parts = member.name.split("/")
      if (member.isfile() and len(parts) == 3 and parts[0] in limits
          and parts[2].endswith(".jpg") and int(parts[2][:-4]) < limits[parts[0]]):
        tar.extract(member, dest, filter="data")
  return dest
