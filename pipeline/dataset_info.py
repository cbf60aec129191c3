"""`dataset_info.json`: what a data directory holds. Written by the Beam job, read by the trainer.

    {
      "format_version": 1,
      "source": "image_dir:/data/cifar10",        # what the job read
      "class_names": ["airplane", ...],           # label i is class_names[i]
      "coarse_class_names": [...],                # CIFAR-100 superclasses, else []
      "image_shape": [32, 32, 3],                 # null when images differ in size
      "splits": {
        "train": {"num_examples": 45000,
                  "shards": ["train-00000-of-00008.tfrecord", ...],   # relative to the dir
                  "per_class": [4500, ...]},
        "validation": {...}, "test": {...}
      },
      "train_mean": [125.3, 123.0, 113.9],        # per channel, 0-255 scale, train split
      "train_std": [63.0, 62.1, 66.7],
      "rejected": {"total": 0, "by_reason": {}},  # see rejected.csv
      "converted": {"grayscale": 0, ...},         # images converted to 8-bit RGB, by kind
      "command": "python -m pipeline.build_tfrecords ..."
    }

The reader validates the file and names what is wrong, so that a bad `--data_dir` fails
before training starts rather than deep inside tf.data.
"""

import dataclasses
import json
import posixpath
from typing import Optional

from pipeline import features

FORMAT_VERSION = 1


class DatasetInfoError(ValueError):
  """The data directory or its dataset_info.json is missing or inconsistent."""


@dataclasses.dataclass(frozen=True)
class SplitInfo:
  num_examples: int
  shards: tuple  # absolute paths (local or gs://)
  per_class: tuple


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  data_dir: str
  class_names: tuple
  coarse_class_names: tuple
  image_shape: Optional[tuple]
  splits: dict  # split name -> SplitInfo
  train_mean: tuple
  train_std: tuple
  raw: dict
  # Set by `subset`: label_map[new label] = the label stored in the records. Readers keep
  # only records of these classes and relabel them 0..len-1.
  label_map: Optional[tuple] = None

  def subset(self, class_indices):
    """This data restricted to `class_indices` (stored labels), relabelled in that order.

    Split sizes come from the per-class counts, so steps per epoch and evaluation
    padding stay exact without reading the data.
    """
    indices = tuple(int(i) for i in class_indices)
    path = join(self.data_dir, features.INFO_FILE)
    if self.label_map is not None:
      raise DatasetInfoError(f"{path}: subset of a subset is not supported")
    bad = [i for i in indices if not 0 <= i < self.num_classes]
    if bad or len(set(indices)) != len(indices):
      raise DatasetInfoError(f"{path}: invalid class subset {indices}")
    splits = {}
    for name, split in self.splits.items():
      if len(split.per_class) != self.num_classes:
        raise DatasetInfoError(
            f"{path}: split {name!r} has no per-class counts, which a class subset needs; "
            "rebuild the data with `python -m pipeline.build_tfrecords`")
      per_class = tuple(split.per_class[i] for i in indices)
      splits[name] = SplitInfo(num_examples=sum(per_class), shards=split.shards,
                               per_class=per_class)
    return dataclasses.replace(self, class_names=tuple(self.class_names[i] for i in indices),
                               splits=splits, label_map=indices)

  @property
  def num_classes(self):
    return len(self.class_names)

  def split(self, name):
    if name not in self.splits:
      raise DatasetInfoError(
          f"{posixpath.join(self.data_dir, features.INFO_FILE)} has no split {name!r}; "
          f"it has {sorted(self.splits)}")
    return self.splits[name]


def join(directory, name):
  """Joins like posixpath but keeps `gs://bucket` prefixes intact."""
  return directory.rstrip("/") + "/" + name


def load(data_dir, *, check_files=True):
  """Reads and validates `<data_dir>/dataset_info.json` (local or gs://, via tf.io.gfile)."""
  import tensorflow as tf  # The reader side runs in the trainer, which has TensorFlow.
  path = join(data_dir, features.INFO_FILE)
  if not tf.io.gfile.exists(path):
    hint = ""
    if tf.io.gfile.isdir(data_dir):
      hint = " (the directory exists; was it written by `python -m pipeline.build_tfrecords`?)"
    else:
      hint = " (no such directory)"
    raise DatasetInfoError(f"--data_dir={data_dir}: {path} not found{hint}")
  with tf.io.gfile.GFile(path, "r") as f:
    text = f.read()
  info = from_json(data_dir, text)
  if check_files:
    for name, split in info.splits.items():
      missing = [s for s in split.shards if not tf.io.gfile.exists(s)]
      if missing:
        raise DatasetInfoError(
            f"{path} lists {len(split.shards)} {name} shards but {len(missing)} are missing, "
            f"e.g. {missing[0]}")
  return info


def from_json(data_dir, text):
  path = join(data_dir, features.INFO_FILE)
  try:
    raw = json.loads(text)
  except json.JSONDecodeError as e:
    raise DatasetInfoError(f"{path} is not valid JSON: {e}") from None
  for field in ("class_names", "splits"):
    if field not in raw:
      raise DatasetInfoError(f"{path} has no {field!r} field")
  if raw.get("format_version") != FORMAT_VERSION:
    raise DatasetInfoError(
        f"{path} has format_version {raw.get('format_version')!r}; this code reads "
        f"{FORMAT_VERSION}. Rebuild the data with `python -m pipeline.build_tfrecords`.")
  splits = {}
  for name, s in raw["splits"].items():
    try:
      splits[name] = SplitInfo(
          num_examples=int(s["num_examples"]),
          shards=tuple(join(data_dir, f) for f in s["shards"]),
          per_class=tuple(s.get("per_class", ())))
    except (KeyError, TypeError, ValueError) as e:
      raise DatasetInfoError(f"{path}: split {name!r} is malformed ({e!r})") from None
  shape = raw.get("image_shape")
  return DatasetInfo(
      data_dir=data_dir,
      class_names=tuple(raw["class_names"]),
      coarse_class_names=tuple(raw.get("coarse_class_names") or ()),
      image_shape=tuple(shape) if shape else None,
      splits=splits,
      train_mean=tuple(raw.get("train_mean") or (0.0, 0.0, 0.0)),
      train_std=tuple(raw.get("train_std") or (1.0, 1.0, 1.0)),
      raw=raw)
