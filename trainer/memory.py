"""How much memory this process may really use: the cgroup limit (a container's, a Kubernetes
pod's, or one made by hand) or the physical RAM, whichever leaves less, and what is in use.

Inside a container, psutil and /proc/meminfo report the HOST's RAM, not the container's
limit: a process that sizes itself by them is killed by the kernel (exit 137) long before it
reaches that size. So the limit is read from the cgroup files themselves, for cgroup v1
(`memory.limit_in_bytes`) and v2 (`memory.max`), over the process's own cgroup and every
ancestor (a parent's limit binds the children too). Linux only; elsewhere only the
physical RAM is known.

What counts as in use is what the kernel cannot take back: for a cgroup its working set (its
usage less the inactive file cache, the figure Kubernetes evicts by), for the machine its RAM
less MemAvailable. Not the process's RSS: RSS counts the shared libraries, which were loaded
and charged to the cache before this process started (about 400 of TensorFlow's 900 MiB).
"""

import dataclasses
import os

CGROUP_ROOT = "/sys/fs/cgroup"
# cgroup v1 writes "no limit" as the largest page-aligned int64, about 8 EiB; anything at or
# above this is no limit.
_NO_LIMIT = 2**62


@dataclasses.dataclass(frozen=True)
class Memory:
  """Bytes: the limit that binds this process, where it comes from, and what is in use."""
  limit: int
  source: str  # "cgroup v1 /sys/fs/cgroup/memory/.../memory.limit_in_bytes", "physical RAM"
  used: int  # counted against `limit` now and not reclaimable

  @property
  def available(self):
    """What this process may still allocate before the limit."""
    return max(0, self.limit - self.used)


def _read_int(path):
  try:
    with open(path) as f:
      text = f.read().strip()
  except OSError:
    return None
  if text == "max":  # cgroup v2: no limit
    return None
  try:
    value = int(text)
  except ValueError:
    return None
  return value if value < _NO_LIMIT else None


def _ancestors(path):
  """'/a/b' -> ['/a/b', '/a', '/']."""
  out = []
  path = "/" + path.strip("/")
  while True:
    out.append(path)
    if path == "/":
      return out
    path = os.path.dirname(path)


def _own_cgroups(proc_cgroup="/proc/self/cgroup"):
  """[(version, cgroup path)] of this process's memory cgroups, from /proc/self/cgroup."""
  out = []
  try:
    with open(proc_cgroup) as f:
      lines = f.read().splitlines()
  except OSError:
    return out
  for line in lines:
    parts = line.split(":", 2)
    if len(parts) != 3:
      continue
    _, controllers, path = parts
    if "memory" in controllers.split(","):
      out.append((1, path))
    elif parts[0] == "0" and controllers == "":
      out.append((2, path))
  return out


def _stat(path, key):
  """One field of a cgroup's memory.stat (0 if absent)."""
  try:
    with open(path) as f:
      for line in f:
        name, _, value = line.partition(" ")
        if name == key:
          return int(value)
  except (OSError, ValueError):
    pass
  return 0


def cgroup_working_set(limit_file):
  """Bytes in use by the cgroup whose limit is `limit_file`: usage less inactive file cache."""
  directory = os.path.dirname(limit_file)
  if limit_file.endswith("memory.limit_in_bytes"):  # v1; total_*: this cgroup and below
    usage = _read_int(os.path.join(directory, "memory.usage_in_bytes")) or 0
    inactive = _stat(os.path.join(directory, "memory.stat"), "total_inactive_file")
  else:
    usage = _read_int(os.path.join(directory, "memory.current")) or 0
    inactive = _stat(os.path.join(directory, "memory.stat"), "inactive_file")
  return max(0, usage - inactive)


def cgroup_limit(root=CGROUP_ROOT, proc_cgroup="/proc/self/cgroup"):
  """(bytes, the file it was read from) of the tightest memory cgroup limit on this process,
  or (None, None) if there is none."""
  candidates = []
  for version, path in _own_cgroups(proc_cgroup):
    if version == 1:
      base, name = os.path.join(root, "memory"), "memory.limit_in_bytes"
    else:
      # v2 is mounted at the root (pure v2) or at unified/ (hybrid, as systemd sets it up).
      base = root if os.path.exists(os.path.join(root, "cgroup.controllers")) else \
          os.path.join(root, "unified")
      name = "memory.max"
    # Inside a container the cgroup's own directory is often mounted as the root, and the
    # path /proc/self/cgroup names does not exist there: the root's file is the limit then.
    for cgroup in _ancestors(path):
      file = os.path.join(base, cgroup.lstrip("/"), name)
      value = _read_int(file)
      if value is not None:
        candidates.append((value, file))
  if not candidates:
    return None, None
  return min(candidates)


def physical_ram():
  return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def ram_available():
  """MemAvailable of /proc/meminfo in bytes (the RAM that can be had without swapping)."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return physical_ram()


def current():
  """The Memory of this process now: the cgroup's or the machine's, whichever leaves less."""
  ram = physical_ram()
  machine = Memory(limit=ram, source="physical RAM", used=ram - ram_available())
  limit, file = cgroup_limit()
  if limit is None:
    return machine
  version = 1 if file.endswith("memory.limit_in_bytes") else 2
  cgroup = Memory(limit=limit, source=f"cgroup v{version} {file}",
                  used=cgroup_working_set(file))
  return cgroup if cgroup.available <= machine.available else machine
