"""trainer/memory.py: the limit a process really has, read inside a real memory cgroup, and the
cgroup v1/v2 file layouts it reads."""

import json
import subprocess
import sys

import pytest

from tests import processes
from tools import cgroups
from trainer import memory

MIB = 2**20


def test_a_process_in_a_memory_cgroup_sees_its_limit():
  reason = cgroups.skip_reason()
  if reason:
    pytest.skip(reason)
  script = ("import dataclasses, json; from trainer import memory; "
            "print(json.dumps(dataclasses.asdict(memory.current())))")
  with cgroups.memory_cgroup(700 * MIB) as cgroup:
    out = subprocess.run([sys.executable, "-c", script], cwd=processes.REPO, check=True,
                         capture_output=True, text=True, preexec_fn=cgroup.preexec).stdout
  seen = json.loads(out)
  assert seen["limit"] == 700 * MIB
  assert "cgroup v" in seen["source"] and cgroup.path in seen["source"]
  # In use: the child's own working set, well under its RSS (the shared libraries are
  # charged to the cgroups that loaded them first).
  assert 0 < seen["used"] < 700 * MIB


def test_the_binding_limit_is_the_one_that_leaves_less():
  here = memory.current()
  ram = memory.physical_ram()
  assert here.available <= memory.ram_available() and here.limit <= ram
  assert here.used > 10 * MIB and here.available == here.limit - here.used


def _tree(tmp_path, files, proc_cgroup):
  for name, text in files.items():
    path = tmp_path / "cgroup" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
  (tmp_path / "proc_cgroup").write_text(proc_cgroup)
  return str(tmp_path / "cgroup"), str(tmp_path / "proc_cgroup")


def test_v2_takes_the_tightest_limit_of_the_cgroup_and_its_ancestors(tmp_path):
  # A pure v2 host (cgroup.controllers at the root): the pod's limit binds its container.
  root, proc = _tree(tmp_path, {"cgroup.controllers": "cpu memory",
                                "kubepods/memory.max": "1073741824",
                                "kubepods/pod1/memory.max": "max",
                                "kubepods/pod1/ctr/memory.max": "max"},
                     "0::/kubepods/pod1/ctr\n")
  limit, source = memory.cgroup_limit(root, proc)
  assert limit == 2**30 and source.endswith("kubepods/memory.max")
  (tmp_path / "cgroup" / "kubepods" / "memory.current").write_text(str(700 * MIB))
  (tmp_path / "cgroup" / "kubepods" / "memory.stat").write_text(
      f"anon {500 * MIB}\nfile {200 * MIB}\ninactive_file {150 * MIB}\n")
  assert memory.cgroup_working_set(source) == 550 * MIB


def test_v1_inside_a_container_reads_the_mounted_root(tmp_path):
  # The container's own cgroup is mounted as the root: the path /proc/self/cgroup names is not
  # there, the root's limit is the one; "no limit" is a huge number, not a limit.
  root, proc = _tree(tmp_path, {"memory/memory.limit_in_bytes": "536870912"},
                     "4:memory:/docker/abc\n1:cpu:/docker/abc\n")
  assert memory.cgroup_limit(root, proc) == (512 * MIB,
                                            f"{root}/memory/memory.limit_in_bytes")
  root, proc = _tree(tmp_path / "none", {"memory/memory.limit_in_bytes": "9223372036854771712"},
                     "4:memory:/\n")
  assert memory.cgroup_limit(root, proc) == (None, None)
