"""Archive sources: the CIFAR-100 python archive and TensorFlow Datasets, planned before the
job (pipeline.sources.Plan, with one read per split) and read inside it by module-level
readers (run_read), which yield elements with their pixels.

The file sources (image folders, path lists), the Plan and the element format are
pipeline/sources.py.
"""

import hashlib
import io
import logging
import os
import pickle
import posixpath
import tarfile
import urllib.request
import zlib

import fsspec

from pipeline.sources import NO_COARSE, SPLIT_DIRS, Plan, SourceError

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
# Official sizes, used to size shards before the job reads the archive.
CIFAR100_SIZES = {"train": 50000, "test": 10000}
CIFAR100_CLASSES, CIFAR100_COARSE_CLASSES = 100, 20


# --- CIFAR-100 archive -------------------------------------------------------------------------


class _PlainDataUnpickler(pickle.Unpickler):
  """Unpickles plain data only; the archive is untrusted input.

  Dicts, lists, bytes, str and int need no globals, so any global is refused, except those
  that a numpy array needs (the official pickles hold `data` as a uint8 ndarray; its dtype is
  checked after loading) and `_codecs.encode`, which protocol-2 pickles written by Python 3
  use to spell bytes. Nothing else (os.system, builtins.eval, ...) can be reached.
  """

  _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
              ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

  def find_class(self, module, name):
    if (module, name) in self._ALLOWED:
      return super().find_class(module, name)
    raise pickle.UnpicklingError(
        f"refusing to load {module}.{name}: a CIFAR pickle may hold plain data only")


def _load_pickle(data, what):
  try:
    return _PlainDataUnpickler(io.BytesIO(data), encoding="bytes").load()
  except pickle.UnpicklingError as e:
    raise SourceError(f"{what}: {e}") from None
  except Exception as e:
    raise SourceError(f"{what}: not a readable pickle ({type(e).__name__}: {e})") from None


def file_md5(path):
  md5 = hashlib.md5()
  with fsspec.open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      md5.update(chunk)
  return md5.hexdigest()


def download_cifar100(cache_dir):
  """Downloads the official archive into cache_dir once; returns its path."""
  os.makedirs(cache_dir, exist_ok=True)
  path = os.path.join(cache_dir, posixpath.basename(CIFAR100_URL))
  if os.path.exists(path):
    return path
  logging.info("Downloading %s to %s (161 MB)", CIFAR100_URL, path)
  partial = path + ".partial"
  with urllib.request.urlopen(CIFAR100_URL, timeout=60) as r, open(partial, "wb") as f:
    total = int(r.headers.get("Content-Length") or 0)
    done, last = 0, 0
    for chunk in iter(lambda: r.read(1 << 20), b""):
      f.write(chunk)
      done += len(chunk)
      if total and done - last >= total // 10:
        last = done
        logging.info("  %d%% of %d MB", 100 * done // total, total >> 20)
  os.replace(partial, path)
  return path


def _archive_members(archive, names):
  """{name: bytes} for the archive members whose base name is in names."""
  found = {}
  try:
    with fsspec.open(archive, "rb") as raw, tarfile.open(fileobj=raw, mode="r:gz") as tar:
      for member in tar:
        base = posixpath.basename(member.name)
        if member.isfile() and base in names:
          found[base] = tar.extractfile(member).read()
  except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
    raise SourceError(f"{archive}: not a complete tar.gz archive ({type(e).__name__}: {e}); "
                      "is it truncated? Delete it and download it again") from None
  missing = sorted(set(names) - set(found))
  if missing:
    raise SourceError(f"{archive}: has no member named {missing} "
                      "(expected cifar-100-python/{meta,train,test})")
  return found


def plan_cifar100(archive, *, md5=CIFAR100_MD5, cache_dir="~/.cache/tfrecord_pipeline"):
  """Plans reading cifar-100-python.tar.gz (local, gs:// or downloaded when archive is empty)."""
  if not archive:
    archive = download_cifar100(os.path.expanduser(cache_dir))
  try:
    exists = fsspec.core.url_to_fs(archive)[0].exists(archive)
  except Exception as e:
    raise SourceError(f"--cifar100_archive={archive}: cannot be read ({e})") from None
  if not exists:
    raise SourceError(f"--cifar100_archive={archive}: no such file")
  if md5:
    got = file_md5(archive)
    if got != md5:
      raise SourceError(f"{archive}: md5 is {got}, expected {md5} (--archive_md5); "
                        "the file is corrupt, truncated or not the official archive")
  meta = _load_pickle(_archive_members(archive, {"meta"})["meta"], f"{archive}: meta")
  try:
    fine = [n.decode() for n in meta[b"fine_label_names"]]
    coarse = [n.decode() for n in meta[b"coarse_label_names"]]
  except (KeyError, TypeError, AttributeError) as e:
    raise SourceError(f"{archive}: meta lacks fine/coarse label names ({e!r})") from None
  return Plan(
      description=f"cifar100:{archive}", class_names=fine, coarse_class_names=coarse,
      has_test=True, split_sizes=dict(CIFAR100_SIZES),
      reads=[("cifar100", {"archive": archive, "split": s}) for s in SPLIT_DIRS])


def _load_cifar100_split(archive, split):
  """(pixels [N, 32, 32, 3] uint8, fine labels, coarse labels, file names) of one split,
  after checking that the pickle holds what the official one holds."""
  import numpy as np
  batch = _load_pickle(_archive_members(archive, {split})[split], f"{archive}: {split}")
  try:
    data = batch[b"data"]
    fine, coarse = list(batch[b"fine_labels"]), list(batch[b"coarse_labels"])
    names = batch.get(b"filenames") or [b""] * len(fine)
  except (KeyError, TypeError, AttributeError) as e:
    raise SourceError(f"{archive}: {split} lacks {e}") from None
  if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
          and data.shape[1] == 3072 and len(data) == len(fine) == len(coarse) == len(names)):
    raise SourceError(f"{archive}: {split} data is not an N x 3072 uint8 array matching "
                      f"{len(fine)} labels")
  # A label outside the classes would otherwise be dropped later as if it were left out by
  # a class subset: refuse the archive instead.
  for what, labels, count in (("fine_labels", fine, CIFAR100_CLASSES),
                              ("coarse_labels", coarse, CIFAR100_COARSE_CLASSES)):
    bad = [i for i, l in enumerate(labels)
           if not (isinstance(l, (int, np.integer)) and 0 <= l < count)]
    if bad:
      raise SourceError(f"{archive}: {split} {what}[{bad[0]}] = {labels[bad[0]]!r} is not a "
                        f"class index 0..{count - 1} ({len(bad)} such)")
  # Rows are channel-major (1024 red, 1024 green, 1024 blue) -> [N, 32, 32, 3].
  return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), fine, coarse, names


def read_cifar100(archive, split):
  """Yields the elements of one split of the archive (runs inside the Beam job)."""
  images, fine, coarse, names = _load_cifar100_split(archive, split)
  for i in range(len(fine)):
    name = names[i].decode(errors="replace") if isinstance(names[i], bytes) else str(names[i])
    yield {"key": f"{split}/{i:05d}/{name}", "split": split,
           "label": int(fine[i]), "coarse_label": int(coarse[i]), "pixels": images[i]}


def check_cifar100(plan):
  """Reads every split of a planned archive once, before the job, so that an unsafe pickle, a
  truncated member or malformed data is refused with a SourceError naming it, instead of
  failing inside the job. Worth it when the md5 was not checked (an archive with the official
  md5 is the official archive); costs one more read of the archive."""
  for _, kwargs in plan.reads:
    _load_cifar100_split(kwargs["archive"], kwargs["split"])


# --- TensorFlow Datasets -----------------------------------------------------------------------


def plan_tfds(name, *, data_dir=None, manual_dir=None):
  """Plans reading an image-classification dataset from TensorFlow Datasets."""
  import tensorflow_datasets as tfds
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:
    raise SourceError(f"--source=tfds:{name}: {e}") from None
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  image_key, label_key = _tfds_keys(builder)
  label_feature = builder.info.features[label_key]
  splits = {s: builder.info.splits[s].num_examples for s in SPLIT_DIRS
            if s in builder.info.splits}
  if not builder.info.splits:
    # No split metadata (tfds.testing.mock_data serves examples without it): read train and
    # test; their sizes are unknown until read, so shard counts use a nominal size.
    logging.warning("tfds:%s has no split metadata; reading train and test", name)
    splits = {"train": 1, "test": 1}
  if "train" not in splits:
    raise SourceError(f"tfds:{name} has no train split (it has {list(builder.info.splits)})")
  return Plan(
      description=f"tfds:{name}", class_names=list(label_feature.names),
      has_test="test" in splits, split_sizes=splits,
      reads=[("tfds", {"name": name, "split": s, "data_dir": data_dir}) for s in splits])


def _tfds_keys(builder):
  keys = builder.info.supervised_keys
  if keys and len(keys) == 2:
    return keys
  return "image", "label"


def read_tfds(name, split, data_dir=None):
  """Yields the elements of one split of a prepared tfds dataset (runs inside the job)."""
  import tensorflow_datasets as tfds
  builder = tfds.builder(name, data_dir=data_dir)
  image_key, label_key = _tfds_keys(builder)
  for i, ex in enumerate(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))):
    ident = ex.get("id")
    key = f"{split}/{ident.decode() if isinstance(ident, bytes) else i}"
    pixels = ex[image_key]
    if pixels.ndim == 3 and pixels.shape[2] == 1:
      pixels = pixels.repeat(3, axis=2)
    yield {"key": key, "split": split, "label": int(ex[label_key]),
           "coarse_label": int(ex.get("coarse_label", NO_COARSE)), "pixels": pixels}


READERS = {"cifar100": read_cifar100, "tfds": read_tfds}


def run_read(read):
  """Beam-side entry: ("cifar100", {...}) -> elements."""
  name, kwargs = read
  return READERS[name](**kwargs)
