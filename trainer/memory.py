"""How much memory this process may really use: the cgroup limit (a container's, a Kubernetes
pod's, or one made by hand) or the physical RAM, whichever is smaller, and what the process
already holds.

Inside a container, psutil and /proc/meminfo report the HOST's RAM, not the container's
limit: a process that sizes itself by them is killed by the kernel (exit 137) long before it
reaches that size. So the limit is read from the cgroup files themselves, for cgroup v1
(`memory.limit_in_bytes`) and v2 (`memory.max`), over the process's own cgroup and every
ancestor (a parent's limit binds the children too). Linux only; elsewhere only the
physical RAM is known.
"""

import dataclasses
import os

CGROUP_ROOT = "/sys/fs/cgroup"
# cgroup v1 writes "no limit" as the largest page-aligned int64, about 8 EiB; anything at or
# above this is no limit.
_NO_LIMIT = 2**62


@dataclasses.dataclass(frozen=True)
class Memory:
  """Bytes: the limit that binds this process, where it comes from, and its resident set."""
  limit: int
  source: str  # "cgroup v1 /sys/fs/cgroup/memory/...", "physical RAM"
  rss: int

  @property
  def available(self):
    """What this process may still allocate before the limit: limit minus what it holds."""
    return max(0, self.limit - self.rss)


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
        candidates.append((value, f"cgroup v{version} {file}"))
  if not candidates:
    return None, None
  return min(candidates)


def physical_ram():
  return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def rss(pid="self"):
  """Resident set size of a process in bytes, from /proc/<pid>/status (0 if unknown)."""
  try:
    with open(f"/proc/{pid}/status") as f:
      for line in f:
        if line.startswith("VmRSS:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return 0


def current():
  """The Memory of this process now."""
  limit, source = cgroup_limit()
  ram = physical_ram()
  if limit is None or ram < limit:
    limit, source = ram, "physical RAM"
  return Memory(limit=limit, source=source, rss=rss())
