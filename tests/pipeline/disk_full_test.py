"""A full disk (issue 15, finding 7): a real 1 MiB tmpfs, mounted for the test (root only).

Before: a 0-byte tfrecords_info.json when the disk filled while it was written, and a ~110-line
traceback from the job. Now: the previous file or none, and one line naming the place and the
error, exit status 3, no temporary files left.
"""

import errno
import json
import os
import shutil
import subprocess
import sys

import pytest

from pipeline import dataset_info
from pipeline import features
from pipeline import output_files
from tests import testdata


def fill(disk, leave=0):
  """Fills the file system of `disk` (adding to one file) until `leave` bytes are free."""
  with open(disk / "filler", "ab") as f:
    try:
      while True:
        st = os.statvfs(disk)
        free = st.f_bavail * st.f_frsize
        if free <= leave:
          break
        f.write(b"\0" * min(free - leave, 1 << 16))
        f.flush()
    except OSError as e:
      assert e.errno == errno.ENOSPC


def info_of(data_dir, classes):
  return dataset_info.DatasetInfo(
      data_dir=str(data_dir), class_names=tuple(classes),
      splits={"train": dataset_info.split_info(str(data_dir), ["train-00000-of-00001.tfrecord"],
                                               [1] * len(classes))})


@pytest.mark.parametrize("beam", [True, False], ids=["beam_filesystems", "tf_gfile"])
def test_dataset_info_on_a_full_disk_is_the_previous_file_or_none_never_empty(small_disk, beam):
  out = small_disk / "out"
  out.mkdir()
  path = dataset_info.write(info_of(out, ["cat", "dog"]), beam=beam)
  before = open(path, "rb").read()
  fill(small_disk)
  with pytest.raises(Exception) as e:
    dataset_info.write(info_of(out, [f"class{i}" for i in range(2000)]), beam=beam)
  assert open(path, "rb").read() == before  # the previous file, whole
  if beam:  # (TensorFlow raises its own error type, which names the temporary file.)
    assert isinstance(e.value, OSError) and e.value.errno == errno.ENOSPC
    assert e.value.filename == path
  os.remove(path)
  fill(small_disk)  # (the removed file's page was free again)
  with pytest.raises(Exception):
    dataset_info.write(info_of(out, ["cat", "dog"]), beam=beam)
  assert os.listdir(out) == []  # no 0-byte tfrecords_info.json, no temporary file


def test_the_job_on_a_full_disk_says_so_in_one_line_and_leaves_no_temporary_files(
    small_disk, tmp_path):
  images = tmp_path / "images"
  for path, name in testdata.sample_files("train", ("cat", "dog"), 25):
    os.makedirs(images / name, exist_ok=True)
    shutil.copy(path, images / name / path.name)
  out = small_disk / "out"
  # Room for the plan (a few KB) but not for the shards (50 JPEGs, about 120 KB).
  fill(small_disk, leave=40 << 10)
  done = subprocess.run(
      [sys.executable, "-m", "pipeline.build_tfrecords", "--source=image_dir",
       f"--image_dir={images}", f"--output_dir={out}", "--num_shards=1"],
      cwd=testdata.REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode == 3, done.stderr[-3000:]
  assert "Traceback" not in done.stderr, done.stderr[-3000:]
  errors = [l for l in done.stderr.splitlines()
            if l.startswith(("E", "F", "pipeline.build_tfrecords: error: "))]
  assert len(errors) == 1, done.stderr[-3000:]
  assert errors[0] == "pipeline.build_tfrecords: error: " + (
      f"writing into --output_dir={out}: No space left on device (ENOSPC) in the job's step "
      "WriteShards/Write/ParDo(WriteShard); free space there or choose another --output_dir, "
      "then rerun"), errors[0]
  left = os.listdir(out)
  assert features.INFO_FILE not in left and features.REJECTED_FILE not in left
  assert not [n for n in left if n.startswith((output_files.TEMP_PREFIX,
                                              output_files.BEAM_TEMP_PREFIX))], left


def test_other_os_errors_name_the_path_and_verbosity_brings_the_traceback(tmp_path):
  # An --output_dir below a regular file: every write there fails with ENOTDIR.
  (tmp_path / "file").write_text("")
  out = tmp_path / "file" / "out"
  done = subprocess.run(
      [sys.executable, "-m", "pipeline.build_tfrecords", "--source=path_list",
       f"--path_list={testdata.SAMPLE_CSV}", f"--output_dir={out}", "--verbosity=1"],
      cwd=testdata.REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode == 3, done.stderr[-3000:]
  assert "Traceback (most recent call last)" in done.stderr
  last = done.stderr.strip().splitlines()[-1]
  assert last == f"pipeline.build_tfrecords: error: {out}: Not a directory (ENOTDIR)", last


def test_an_os_error_inside_a_stage_is_found_with_its_path():
  # What Beam's runner raises for a stage's OSError: the text, in a RuntimeError.
  wrapped = RuntimeError("OSError: [Errno 28] No space left on device: '/o/x.json' "
                         "[while running 'WriteMetadata/WriteInfo']")
  assert output_files.os_error_line(wrapped, "/o") == (
      "/o/x.json: No space left on device (ENOSPC) in the job's step WriteMetadata/WriteInfo; "
      "free space there or choose another --output_dir, then rerun")
  try:
    try:
      raise PermissionError(errno.EACCES, "Permission denied", "/ro/out")
    except OSError as e:
      raise RuntimeError("the runner's own words") from e
  except RuntimeError as e:
    assert output_files.os_error_line(e, "/ro/out") == (
        "/ro/out: Permission denied (EACCES); the job must be able to write there")
  assert output_files.os_error_line(ValueError("a bug"), "/o") is None
  assert json.loads(json.dumps(output_files.find_os_error(OSError(5, "I/O error")))) == [
      5, "I/O error", None]
