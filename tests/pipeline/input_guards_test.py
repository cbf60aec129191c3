"""Inputs that used to vanish, hang the job or be stored wrong (issue 15, findings 8-11).

Real files: the shipped sample's JPEGs, a FIFO (os.mkfifo), a Unix socket, /dev/zero, a sparse
file over --max_image_bytes, a JPEG with an EXIF orientation, an animated GIF, and a class
folder that cannot be listed (root is denied it once the DAC capabilities are dropped with
setpriv). The job cases share one Beam run.
"""

import csv
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pipeline import build_tfrecords
from pipeline import features
from pipeline import sources
from tests import testdata


def sample(name, index):
  return testdata.sample_files("train", [name])[index][0]


def pixels(data):
  return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def with_orientation(jpeg, orientation):
  """The JPEG's own bytes with an EXIF APP1 segment (orientation tag only) after SOI: the
  pixel data stays byte for byte what it was."""
  exif = Image.Exif()
  exif[0x0112] = orientation
  payload = exif.tobytes()  # b"Exif\0\0" + a TIFF header and IFD
  return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def portrait_jpeg():
  """A real sample image cut to 32 high x 20 wide, as a JPEG (a non-square image, so that a
  rotation shows in the shape)."""
  buf = io.BytesIO()
  Image.fromarray(pixels(sample("dog", 0).read_bytes())[:, :20]).save(buf, "JPEG", quality=95)
  return buf.getvalue()


def animated_gif():
  """Two frames: two real sample images."""
  frames = [Image.fromarray(pixels(sample("dog", i).read_bytes())) for i in (1, 2)]
  buf = io.BytesIO()
  frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
  return buf.getvalue()


class Watchdog:
  """Fails the test instead of hanging it (the job used to block on a FIFO forever)."""

  def __init__(self, seconds):
    self._seconds = seconds

  def __enter__(self):
    def fire(*_):
      raise TimeoutError(f"the job did not finish in {self._seconds} s (blocked on a read?)")
    self._old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(self._seconds)

  def __exit__(self, *_):
    signal.alarm(0)
    signal.signal(signal.SIGALRM, self._old)


def test_special_files_are_rejected_unread_and_rotated_or_animated_images_are_stored_as_shown(
    tmp_path, monkeypatch):
  root = tmp_path / "images"
  for name in ("cat", "dog"):
    os.makedirs(root / name)
    for i in range(3):
      shutil.copy(sample(name, i), root / name / f"{i}.jpg")
  # Finding 10: none of these may be read. A FIFO blocks its reader forever (no writer);
  # /dev/zero never ends; the sparse file holds no data but says it is 64 MiB + 1 byte.
  os.mkfifo(root / "cat" / "x.jpg")
  sock = socket.socket(socket.AF_UNIX)
  # Bound by a relative name: a socket's path is limited to 107 bytes, and Bazel's sandbox
  # puts tmp_path deeper than that.
  monkeypatch.chdir(root / "cat")
  sock.bind("s.jpg")
  monkeypatch.undo()
  os.symlink("/dev/zero", root / "cat" / "zero.jpg")
  with open(root / "cat" / "big.jpg", "wb") as f:
    f.truncate(sources.MAX_IMAGE_BYTES + 1)
  # Finding 11: a portrait photo as a phone stores it (landscape pixels, orientation 6:
  # "rotate 90 degrees clockwise to show"), one with orientation 1, and an animated GIF.
  portrait = portrait_jpeg()
  (root / "dog" / "rotated.jpg").write_bytes(with_orientation(portrait, 6))
  upright = with_orientation(sample("dog", 3).read_bytes(), 1)
  (root / "dog" / "upright.jpg").write_bytes(upright)
  gif = animated_gif()
  (root / "dog" / "anim.gif").write_bytes(gif)
  out = tmp_path / "out"
  try:
    with Watchdog(120):
      result = build_tfrecords.run_job(build_tfrecords.JobConfig(
          source="image_dir", image_dir=str(root), output_dir=str(out), num_shards=1,
          validation_fraction=0.0, test_fraction=0.0, max_reject_fraction=1.0))
  finally:
    sock.close()
  assert result.exit_code == 0
  with open(out / features.REJECTED_FILE, newline="") as f:
    rows = {source: [reason, detail] for source, reason, detail in list(csv.reader(f))[1:]}
  assert rows == {
      f"{root}/cat/x.jpg": ["not_a_regular_file", "a named pipe (FIFO)"],
      f"{root}/cat/s.jpg": ["not_a_regular_file", "a socket"],
      f"{root}/cat/zero.jpg": ["not_a_regular_file", "a character device"],
      f"{root}/cat/big.jpg": ["file_too_large", "67,108,865 bytes, more than "
                              f"--max_image_bytes={sources.MAX_IMAGE_BYTES}"],
  }
  info = result.info
  assert info["rejected"]["by_reason"] == {"file_too_large": 1, "not_a_regular_file": 3}
  assert info["converted"] == {"animated_first_frame": 1, "exif_orientation": 1, "palette": 1}
  assert result.counters["converted/exif_orientation"] == 1
  shard = out / info["splits"]["train"]["shards"][0]
  records = {r[features.KEY].numpy().decode(): r
             for r in map(features.parse_single, tf.data.TFRecordDataset(str(shard)))}
  assert len(records) == 6 + 3

  # Stored as a viewer shows it, decoded as the trainer decodes (TensorFlow ignores EXIF:
  # the original bytes decode unrotated, 32 high and 20 wide).
  rotated = records["dog/rotated.jpg"]
  assert rotated[features.FORMAT].numpy() == b"png"
  assert (int(rotated[features.HEIGHT]), int(rotated[features.WIDTH])) == (20, 32)
  stored = tf.io.decode_image(rotated[features.IMAGE]).numpy()
  np.testing.assert_array_equal(stored, np.rot90(pixels(portrait), k=-1))
  assert tf.io.decode_jpeg(with_orientation(portrait, 6)).shape == (32, 20, 3)
  # Orientation 1 needs no rotation: the original bytes are kept.
  assert records["dog/upright.jpg"][features.IMAGE].numpy() == upright
  # The animation's first frame, as one 3-D image (decode_gif would give [frames, h, w, 3]).
  first = tf.io.decode_image(records["dog/anim.gif"][features.IMAGE]).numpy()
  np.testing.assert_array_equal(first, pixels(gif))
  assert tf.io.decode_gif(gif).shape[0] == 2


def test_integer_labels_that_leave_classes_empty_are_refused_by_row(tmp_path):
  # Finding 8: labels 0 and 1 and one typo, 100000. Before: 100,001 classes, exit 0.
  rows = [f"{sample('cat', i)},0" for i in range(3)] + [f"{sample('dog', i)},1" for i in range(3)]
  rows.insert(4, f"{sample('dog', 5)},100000")
  csv_path = tmp_path / "list.csv"
  csv_path.write_text("path,label\n" + "\n".join(rows) + "\n")
  out = tmp_path / "out"
  with pytest.raises(sources.SourceError) as e:
    build_tfrecords.run_job(build_tfrecords.JobConfig(
        source="path_list", path_list=str(csv_path), output_dir=str(out)))
  assert str(e.value) == (
      f"--path_list={csv_path}: integer labels make the classes 0..100000, but 99998 of them "
      f"have no rows (2..99999). Rows with labels above 1: {csv_path}:6 (label 100000). Fix "
      "those labels, or give the classes with --class_names_file (rows with labels outside it "
      "are then rejected as label_out_of_range)")
  assert not out.exists()  # refused before the job started
  # With the class list given, the row is rejected by name and the rest planned.
  (tmp_path / "classes.txt").write_text("cat\ndog\n")
  plan = sources.plan_path_list(str(csv_path), class_names_file=str(tmp_path / "classes.txt"))
  assert len(plan.elements) == 6 and [e["label"] for e in plan.elements].count(1) == 3
  assert plan.rejected == [(str(sample("dog", 5)), "label_out_of_range",
                            f"label 100000 is outside 0..1 ({csv_path}:6; --class_names_file "
                            "names 2 classes)")]
  # Integer labels with no gap are still their own classes.
  csv_path.write_text("path,label\n" + "\n".join(rows[:4] + rows[5:]) + "\n")
  assert sources.plan_path_list(str(csv_path)).class_names == ["0", "1"]
  # Labels counted from 1 leave class 0 empty: said so, without listing every row.
  csv_path.write_text("path,label\n" + "\n".join(
      f"{p},{int(l) + 1}" for p, l in (r.rsplit(",", 1) for r in rows[:4] + rows[5:])) + "\n")
  with pytest.raises(sources.SourceError, match=r"the classes 0..2, but 1 of them have no rows "
                     r"\(0\). No row has label 0: are the labels counted from 1\? Renumber"):
    sources.plan_path_list(str(csv_path))


DROP_DAC = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
            "--bounding-set=-dac_override,-dac_read_search"]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root and setpriv: drops CAP_DAC_OVERRIDE so that a mode-000 "
                    "folder is really refused (root with it reads everything)")
def test_a_class_folder_that_cannot_be_listed_stops_the_job_by_name(tmp_path):
  # Finding 9: the class and its images used to vanish ("2 classes", 0 rejected, exit 0).
  root = tmp_path / "images"
  for name in ("cat", "dog", "ship"):
    os.makedirs(root / name)
    for i in range(2):
      shutil.copy(sample(name, i), root / name / f"{i}.jpg")
  os.makedirs(root / "ship" / "extra")
  shutil.copy(sample("ship", 3), root / "ship" / "extra" / "3.jpg")
  os.chmod(root / "dog", 0)
  try:
    done = subprocess.run(
        DROP_DAC + [sys.executable, "-m", "pipeline.build_tfrecords", "--source=image_dir",
                    f"--image_dir={root}", f"--output_dir={tmp_path / 'out'}"],
        cwd=testdata.REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    errors = [l for l in done.stderr.splitlines()
              if l.startswith(("E", "pipeline.build_tfrecords: error: "))]
    assert len(errors) == 1 and errors[0] == "pipeline.build_tfrecords: error: " + (
        f"--image_dir={root}: cannot list 1 folder(s): {root}/dog (Permission denied "
        "(EACCES)). Their images would be left out and the class list would be wrong; make "
        "them readable or move them out of --image_dir"), errors
    # Below the class level (where every file is not_in_class_folder anyway) the folder is
    # a read_error row.
    os.chmod(root / "dog", 0o755)
    os.chmod(root / "ship" / "extra", 0)
    code = ("import json, sys; from pipeline import sources; "
            "p = sources.plan_image_dir(sys.argv[1]); "
            "print(json.dumps([p.class_names, len(p.elements), p.rejected]))")
    done = subprocess.run(DROP_DAC + [sys.executable, "-c", code, str(root)],
                          cwd=testdata.REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == [["cat", "dog", "ship"], 6, [
        [f"{root}/ship/extra", "read_error",
         "a folder that cannot be listed: Permission denied (EACCES)"]]]
  finally:
    os.chmod(root / "dog", 0o755)
    os.chmod(root / "ship" / "extra", 0o755)
