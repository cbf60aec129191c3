"""Builds small cifar-100-python.tar.gz archives in the canonical format, for tests.

The pixel archive cannot be downloaded here, so tests build archives exactly as the official one
is laid out: `cifar-100-python/{meta,train,test}` pickles; train/test hold dicts with keys
b'data' (N x 3072 uint8 numpy array, channel-major rows), b'fine_labels', b'coarse_labels',
b'filenames', b'batch_label'. The pixels are real CIFAR-10 images from the shipped sample and
the meta is the real CIFAR-100 `meta` file from ../shared/data.
"""

import io
import pickle
import tarfile

import numpy as np
from PIL import Image

from tests import testdata


def sample_pixels(split, count):
  """count real images [count, 32, 32, 3] uint8 from the shipped sample."""
  files = testdata.sample_files(split)[:count]
  return np.stack([np.asarray(Image.open(p).convert("RGB")) for p, _ in files])


def batch_pickle(pixels, fine, coarse, split):
  rows = pixels.transpose(0, 3, 1, 2).reshape(len(pixels), 3072)  # channel-major rows
  batch = {b"batch_label": f"{split} batch".encode(),
           b"filenames": [f"img_{split}_{i}.png".encode() for i in range(len(pixels))],
           b"fine_labels": list(fine), b"coarse_labels": list(coarse), b"data": rows}
  return pickle.dumps(batch, protocol=2)


def write_archive(path, members):
  """members: {"meta": bytes, "train": bytes, "test": bytes} -> tar.gz at path."""
  with tarfile.open(path, "w:gz") as tar:
    for name, data in members.items():
      info = tarfile.TarInfo(f"cifar-100-python/{name}")
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return path


def build(path, n_train=12, n_test=6):
  """A canonical archive; returns (path, train pixels, train fine labels, test pixels)."""
  train, test = sample_pixels("train", n_train), sample_pixels("test", n_test)
  fine_train = [(i * 7) % 100 for i in range(n_train)]
  fine_test = [(i * 13) % 100 for i in range(n_test)]
  members = {
      "meta": testdata.CIFAR100_META.read_bytes(),
      "train": batch_pickle(train, fine_train, [f // 5 for f in fine_train], "train"),
      "test": batch_pickle(test, fine_test, [f // 5 for f in fine_test], "test"),
  }
  return write_archive(path, members), train, fine_train, test
