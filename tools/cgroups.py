"""Real memory limits for child processes: a memory cgroup made for them (cgroup v1 or v2).

Needs root and a writable cgroup file system (as on the development machines); tests call
`skip_reason()` and skip with it where that is not so, and `tools.bench_memory
--memory_limit_mib` stops with it.
"""

import contextlib
import os
import uuid

V1 = "/sys/fs/cgroup/memory"
V2 = "/sys/fs/cgroup"


def _layout():
  """(version, parent directory) of a memory cgroup tree this process may create in, or None."""
  if os.path.isfile(os.path.join(V1, "memory.limit_in_bytes")) and os.access(V1, os.W_OK):
    return 1, V1
  controllers = os.path.join(V2, "cgroup.controllers")
  if os.path.isfile(controllers) and os.access(V2, os.W_OK):
    with open(controllers) as f:
      if "memory" in f.read().split():
        return 2, V2
  return None


def skip_reason():
  """Why no memory cgroup can be made here, or None if one can."""
  if os.geteuid() != 0:
    return "needs root to create a memory cgroup"
  if _layout() is None:
    return "no writable cgroup v1 or v2 memory controller on this machine"
  return None


class MemoryCgroup:
  """A memory cgroup with a limit; `preexec` puts a Popen child into it."""

  def __init__(self, path, version):
    self.path, self.version = path, version

  def preexec(self):
    with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
      f.write(str(os.getpid()))

  def peak(self):
    """The most memory the cgroup's processes have held at once, in bytes (None if unknown)."""
    name = "memory.max_usage_in_bytes" if self.version == 1 else "memory.peak"
    try:
      with open(os.path.join(self.path, name)) as f:
        return int(f.read())
    except OSError:
      return None


@contextlib.contextmanager
def memory_cgroup(limit_bytes):
  """Yields a MemoryCgroup limited to `limit_bytes` (swap included on v1 where it can be set,
  so the kernel kills instead of swapping); removes it on exit once its processes are gone."""
  version, parent = _layout()
  path = os.path.join(parent, f"cifar_tfrecords_test_{uuid.uuid4().hex[:8]}")
  os.mkdir(path)
  try:
    if version == 1:
      with open(os.path.join(path, "memory.limit_in_bytes"), "w") as f:
        f.write(str(limit_bytes))
      with contextlib.suppress(OSError):  # absent without swap accounting
        with open(os.path.join(path, "memory.memsw.limit_in_bytes"), "w") as f:
          f.write(str(limit_bytes))
    else:
      with open(os.path.join(path, "memory.max"), "w") as f:
        f.write(str(limit_bytes))
      with contextlib.suppress(OSError):
        with open(os.path.join(path, "memory.swap.max"), "w") as f:
          f.write("0")
    yield MemoryCgroup(path, version)
  finally:
    with contextlib.suppress(OSError):
      os.rmdir(path)
