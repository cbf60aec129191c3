"""Reads a PyTorch state dict saved in torch's legacy (non-zip) format, without torch.

    tensors = torch_checkpoint.read(path)   # {"features.0.0.weight": np.ndarray, ...}

The legacy format (torch.save with _use_new_zipfile_serialization=False, and every
checkpoint torchvision published before 2020) is five pickles followed by raw data:

    magic number, protocol version, system info   (small pickles, checked)
    the state dict                                (tensors refer to storages by key)
    the list of storage keys                      (the order of the raw blocks below)
    per storage: its element count (int64, little-endian), then its bytes

A checkpoint is untrusted input: the state dict is read with an unpickler that reaches no
global except an OrderedDict, torch's tensor-rebuild function and the storage types, all of
them replaced here by plain stand-ins (nothing of torch is imported, nothing can run), as
pipeline/archives.py reads the CIFAR-100 pickles. Only CPU little-endian storages of the dtypes
in _STORAGE_DTYPES are read.
"""

import collections
import pickle
import struct

import numpy as np

_MAGIC = 0x1950A86A20F9469CFC6C
_PROTOCOL_VERSION = 1001
# torch storage class -> numpy dtype of its elements (little-endian, as torch writes them).
_STORAGE_DTYPES = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2",
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2",
    "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?",
}


class CheckpointError(ValueError):
  """The file is not a legacy torch checkpoint this reader understands (the message says why)."""


class _Storage(collections.namedtuple("_Storage", "key dtype")):
  """A persistent reference to a storage block, filled in once the raw data is read."""


class _Tensor(collections.namedtuple("_Tensor", "storage offset shape strides")):
  """What torch._utils._rebuild_tensor(_v2) would rebuild: a strided view of a storage."""


def _rebuild_tensor(storage, storage_offset, size, stride, *unused_args):
  return _Tensor(storage, storage_offset, tuple(size), tuple(stride))


class _StateDictUnpickler(pickle.Unpickler):
  """Unpickles a state dict of tensors only: every global is refused except these stand-ins."""

  _GLOBALS = {("collections", "OrderedDict"): collections.OrderedDict,
              ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
              ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
              **{("torch", name): name for name in _STORAGE_DTYPES}}

  def find_class(self, module, name):
    if (module, name) in self._GLOBALS:
      return self._GLOBALS[(module, name)]
    raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a checkpoint may hold "
                                 "tensors only")

  def persistent_load(self, pid):
    # ("storage", storage type, key, location, element count[, view metadata])
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
      raise pickle.UnpicklingError(f"unknown persistent id {pid!r:.80}")
    storage_type, key, location = pid[1], pid[2], pid[3]
    if storage_type not in _STORAGE_DTYPES:
      raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r}")
    if not str(location).startswith("cpu") and not str(location).startswith("cuda"):
      raise pickle.UnpicklingError(f"unknown storage location {location!r}")
    return _Storage(str(key), np.dtype(_STORAGE_DTYPES[storage_type]))


def _plain_load(f, what):
  """A small pickle of plain data (the header pickles, the storage key list)."""
  class Plain(pickle.Unpickler):
    def find_class(self, module, name):
      raise pickle.UnpicklingError(f"refusing to load {module}.{name} in the {what}")
  return Plain(f).load()


def read(path):
  """{name: np.ndarray} of the state dict in legacy torch checkpoint `path`.

  Raises CheckpointError naming the file if it is not one (a zip-format checkpoint, another
  pickle, a truncated file, anything else); OSError if it cannot be opened.
  """
  with open(path, "rb") as f:
    if f.read(2) == b"PK":
      raise CheckpointError(f"{path}: a zip-format torch checkpoint; only the legacy format "
                            "is read here (torch.save(..., _use_new_zipfile_serialization="
                            "False) writes it)")
    f.seek(0)
    try:
      if _plain_load(f, "magic number") != _MAGIC:
        raise CheckpointError(f"{path}: not a torch checkpoint (wrong magic number)")
      version = _plain_load(f, "protocol version")
      if version != _PROTOCOL_VERSION:
        raise CheckpointError(f"{path}: torch checkpoint protocol {version!r}, expected "
                              f"{_PROTOCOL_VERSION}")
      sys_info = _plain_load(f, "system info")
      if not sys_info.get("little_endian", True):
        raise CheckpointError(f"{path}: a big-endian checkpoint")
      state = _StateDictUnpickler(f).load()
      keys = _plain_load(f, "storage keys")
      # Bytes per element of each storage, from the tensors that view it (a storage no
      # tensor uses is skipped over as if of bytes).
      itemsize = {t.storage.key: t.storage.dtype.itemsize for t in state.values()
                  if isinstance(t, _Tensor)} if isinstance(state, dict) else {}
      blocks = {}
      for key in map(str, keys):
        header = f.read(8)
        if len(header) != 8:
          raise CheckpointError(f"{path}: truncated (storage {key} of {len(keys)} missing)")
        count = struct.unpack("<q", header)[0]
        blocks[key] = (count, f.read(count * itemsize.get(key, 1)))
    except CheckpointError:
      raise
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError,
            struct.error, UnicodeDecodeError) as e:
      raise CheckpointError(f"{path}: not a legacy torch checkpoint ({type(e).__name__}: "
                            f"{e})") from None
  if not isinstance(state, dict):
    raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a state dict")
  return {name: _array(path, name, t, blocks) for name, t in state.items()
          if isinstance(t, _Tensor)}


def _array(path, name, tensor, blocks):
  count, data = blocks.get(tensor.storage.key, (0, b""))
  dtype = tensor.storage.dtype
  if len(data) != count * dtype.itemsize:
    raise CheckpointError(f"{path}: truncated in the data of tensor {name}")
  flat = np.frombuffer(data, dtype=dtype, count=count)
  size = int(np.prod(tensor.shape))
  last = tensor.offset + sum((n - 1) * s for n, s in zip(tensor.shape, tensor.strides))
  if size and (tensor.offset < 0 or last >= count):
    raise CheckpointError(f"{path}: tensor {name} reaches past its storage")
  view = np.lib.stride_tricks.as_strided(
      flat[tensor.offset:] if size else flat, shape=tensor.shape,
      strides=[s * dtype.itemsize for s in tensor.strides])
  return np.array(view, dtype=dtype.newbyteorder("="))
