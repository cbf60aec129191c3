"""`tfrecords_info.json`: what a data directory holds. Its one writer and its one reader.

(Directories written before 2026-12-02 have it as `dataset_info.json`, which `load` still
reads; that name is TensorFlow Datasets' metadata now, written beside it: tfds_metadata.py.)

Written by the Beam job (through Beam's FileSystems, so gs:// works), by the test helpers and
the benchmarks (through tf.io.gfile), all with `write`, atomically (a temporary file renamed
once complete: a full disk leaves the previous file or none, never an empty one); read by the
trainer and the tools with `load`. Every field that is written:

    {
      "format_version": 1,
      "source": "image_dir:/data/cifar10",        # what the job read
      "class_names": ["airplane", ...],           # label i is class_names[i]
      "coarse_class_names": [...],                # CIFAR-100 superclasses, else []
      "image_shape": [32, 32, 3],                 # null when images differ in size
      "image_format": "raw",                      # the job's --image_format, when not
                                                  # "source" (absent: "source")
      "splits": {
        "train": {"num_examples": 45000,
                  "shards": ["images-train.tfrecord-00000-of-00008", ...],  # relative
                  "per_class": [4500, ...]},      # examples of each label
        "validation": {...}, "test": {...}
      },
      "rejected": {"total": 0, "by_reason": {},   # inputs sent to rejected.csv, by reason
                   "fraction": 0.0},              # of all inputs (written + rejected)
      "converted": {"grayscale": 0, ...},         # images converted, by kind (8-bit RGB,
                                                  # exif_orientation, animated_first_frame)
      "skipped": {"hidden_file": 0},              # inputs left out while planning, by reason
      "command": "python -m pipeline.build_tfrecords ..."
    }

`image_format` tells the trainer that every record holds raw pixels (features.py), which it
then decodes a batch at a time; it is left out for the default, "source" (so that the default
output is what it was before the flag, byte for byte, and files without it read as "source").

Files written before 2026-12 may also hold `train_mean` and `train_std` (per-channel pixel
statistics that no model used); the reader ignores them.

The reader validates the file and names what is wrong, so that a bad `--data_dir` fails
before training starts rather than deep inside tf.data.
"""

import dataclasses
import json
import posixpath
from typing import Optional

from pipeline import features
from pipeline import output_files

FORMAT_VERSION = 1


class DatasetInfoError(ValueError):
  """The data directory or its tfrecords_info.json is missing or inconsistent."""


@dataclasses.dataclass(frozen=True)
class SplitInfo:
  num_examples: int
  shards: tuple  # absolute paths (local or gs://)
  per_class: tuple


def split_info(data_dir, shard_names, per_class):
  """A split of `per_class[label]` examples in `shard_names` (relative to data_dir)."""
  return SplitInfo(num_examples=sum(per_class),
                   shards=tuple(join(data_dir, name) for name in shard_names),
                   per_class=tuple(per_class))


def rejected_summary(by_reason, num_written):
  """The `rejected` field: rejections by reason, their total and their fraction of inputs."""
  total = sum(by_reason.values())
  return {"total": total, "by_reason": dict(sorted(by_reason.items())),
          "fraction": round(total / max(num_written + total, 1), 6)}


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  data_dir: str
  class_names: tuple
  splits: dict  # split name -> SplitInfo
  coarse_class_names: tuple = ()
  image_shape: Optional[tuple] = None
  image_format: str = features.SOURCE  # features.IMAGE_FORMATS: what the records store
  source: str = ""
  rejected: dict = dataclasses.field(default_factory=lambda: rejected_summary({}, 0))
  converted: dict = dataclasses.field(default_factory=dict)
  skipped: dict = dataclasses.field(default_factory=dict)
  command: str = ""
  # Set by `subset`: label_map[new label] = the label stored in the records, and
  # stored_class_names the classes the records hold. Readers keep only records of these
  # classes and relabel them 0..len-1.
  label_map: Optional[tuple] = None
  stored_class_names: Optional[tuple] = None

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
                               splits=splits, label_map=indices,
                               stored_class_names=self.class_names)

  @property
  def num_classes(self):
    return len(self.class_names)

  @property
  def num_stored_classes(self):
    """Classes the records hold (labels 0..this-1); more than num_classes after `subset`."""
    return len(self.stored_class_names or self.class_names)

  def to_json(self):
    """The dict that tfrecords_info.json holds (shard paths relative to data_dir)."""
    if self.label_map is not None:
      raise DatasetInfoError("a class subset is a view of a data directory, not one to write")
    prefix = join(self.data_dir, "")
    splits = {}
    for name, split in self.splits.items():
      outside = [s for s in split.shards if not s.startswith(prefix)]
      if outside:
        raise DatasetInfoError(f"split {name!r}: shard {outside[0]} is not in {self.data_dir}")
      splits[name] = {"num_examples": split.num_examples,
                      "shards": [s[len(prefix):] for s in split.shards],
                      "per_class": list(split.per_class)}
    image_format = ({} if self.image_format == features.SOURCE
                    else {"image_format": self.image_format})
    return {
        "format_version": FORMAT_VERSION,
        "source": self.source,
        "class_names": list(self.class_names),
        "coarse_class_names": list(self.coarse_class_names),
        "image_shape": list(self.image_shape) if self.image_shape else None,
        **image_format,
        "splits": splits,
        "rejected": self.rejected,
        "converted": self.converted,
        "skipped": self.skipped,
        "command": self.command,
    }

  def to_json_text(self):
    return json.dumps(self.to_json(), indent=2)

  def split(self, name):
    if name not in self.splits:
      raise DatasetInfoError(
          f"{posixpath.join(self.data_dir, features.INFO_FILE)} has no split {name!r}; "
          f"it has {sorted(self.splits)}")
    return self.splits[name]


join = output_files.join  # Joins like posixpath but keeps `gs://bucket` prefixes intact.


def write(info, *, name=features.INFO_FILE, beam=False):
  """Writes `info` as `<info.data_dir>/<name>` (local or gs://), atomically; returns the path.

  beam: through Beam's FileSystems (the Beam job, whose workers have no TensorFlow), else
  tf.io.gfile (test helpers and benchmarks). An OSError (a full disk) names the path; the
  previous file, if any, is then left as it was.
  """
  path = join(info.data_dir, name)
  output_files.write_atomically(path, info.to_json_text().encode(), beam=beam)
  return path


def load(data_dir, *, check_files=True):
  """Reads and validates `<data_dir>/tfrecords_info.json`, or in a directory written before
  2026-12-02 `<data_dir>/dataset_info.json` (local or gs://, via tf.io.gfile)."""
  import tensorflow as tf  # The reader side runs in the trainer, which has TensorFlow.
  path = join(data_dir, features.INFO_FILE)
  name = features.INFO_FILE
  if not tf.io.gfile.exists(path) and _is_legacy(join(data_dir, features.LEGACY_INFO_FILE)):
    path, name = join(data_dir, features.LEGACY_INFO_FILE), features.LEGACY_INFO_FILE
  if not tf.io.gfile.exists(path):
    hint = ""
    if tf.io.gfile.isdir(data_dir):
      hint = " (the directory exists; was it written by `python -m pipeline.build_tfrecords`?)"
    else:
      hint = " (no such directory)"
    raise DatasetInfoError(f"--data_dir={data_dir}: {path} not found{hint}")
  with tf.io.gfile.GFile(path, "r") as f:
    text = f.read()
  info = from_json(data_dir, text, name=name)
  if check_files:
    for name, split in info.splits.items():
      missing = [s for s in split.shards if not tf.io.gfile.exists(s)]
      if missing:
        raise DatasetInfoError(
            f"{path} lists {len(split.shards)} {name} shards but {len(missing)} are missing, "
            f"e.g. {missing[0]}")
  return info


def _is_legacy(path):
  """Whether path is this project's metadata under its old name (not TFDS's file, which has
  that name now: it has no format_version)."""
  import tensorflow as tf
  if not tf.io.gfile.exists(path):
    return False
  with tf.io.gfile.GFile(path, "r") as f:
    try:
      return "format_version" in json.loads(f.read())
    except json.JSONDecodeError:
      return True  # Let from_json name what is wrong with it.


def from_json(data_dir, text, *, name=features.INFO_FILE):
  """The DatasetInfo of `text`, the contents of `<data_dir>/<name>`."""
  path = join(data_dir, name)
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
  image_format = raw.get("image_format", features.SOURCE)
  if image_format not in features.IMAGE_FORMATS:
    raise DatasetInfoError(f"{path} has image_format {image_format!r}; this code reads "
                           f"{', '.join(features.IMAGE_FORMATS)}")
  # Fields after `splits` are optional, so that older files (and benchmarks' minimal ones)
  # still load; train_mean and train_std of older files are ignored.
  return DatasetInfo(
      data_dir=data_dir,
      class_names=tuple(raw["class_names"]),
      splits=splits,
      coarse_class_names=tuple(raw.get("coarse_class_names") or ()),
      image_shape=tuple(shape) if shape else None,
      image_format=image_format,
      source=raw.get("source", ""),
      rejected=raw.get("rejected") or rejected_summary({}, 0),
      converted=raw.get("converted") or {},
      skipped=raw.get("skipped") or {},
      command=raw.get("command", ""))
