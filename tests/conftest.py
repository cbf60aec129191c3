"""Test-wide set-up: quiet TensorFlow, and the repository root on sys.path."""

import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# gcsfs probes every bucket's type over gRPC/TLS unless told not to, stalling 60 s a call
# against the local emulator; it reads this when imported, so set it before any test does.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope="session")
def make_data_dir(tmp_path_factory):
  """make_data_dir(**kwargs) -> path of a data directory from `testdata.write_data_dir(**kwargs)`.

  One directory per distinct set of arguments, shared by every test of the session: treat it
  as read-only (a test that corrupts data copies it, or writes its own into tmp_path).
  """
  from tests import testdata  # pylint: disable=g-import-not-at-top
  made = {}

  def make(**kwargs):
    key = tuple(sorted(kwargs.items()))
    if key not in made:
      path = tmp_path_factory.mktemp("data")
      testdata.write_data_dir(path, **kwargs)
      made[key] = str(path)
    return made[key]

  return make


@pytest.fixture(scope="session")
def data_dir(make_data_dir):
  """The default test data directory (3 classes of the shipped sample, 2 shards a split)."""
  return make_data_dir()


@pytest.fixture
def small_disk(tmp_path):
  """A 1 MiB tmpfs at tmp_path/disk, unmounted afterwards: a disk that fills up for real
  (root only; skipped with the reason elsewhere)."""
  if os.geteuid() != 0:
    pytest.skip("mounting a tmpfs needs root")
  disk = tmp_path / "disk"
  disk.mkdir()
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                           capture_output=True, text=True)
  if mounted.returncode:
    pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
  try:
    yield disk
  finally:
    subprocess.run(["umount", "-l", str(disk)], check=True)
