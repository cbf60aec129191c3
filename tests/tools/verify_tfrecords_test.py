"""pipeline.verify and `python -m tools.verify_tfrecords` on real TFRecords, each made bad in
one way: a flipped byte (CRC), a count that disagrees, a label out of range, an image that
does not decode, a missing tfrecords_info.json."""

import json
import os
import re
import shutil
import struct
import subprocess
import sys

import pytest
import tensorflow as tf

from pipeline import dataset_info
from pipeline import features
from pipeline import verify
from tests import testdata
from tools import verify_tfrecords

SHARD = features.shard_name("train", 0, 2)


@pytest.fixture
def fresh_data_dir(make_data_dir, tmp_path):
  """A copy of make_data_dir(per_class=5) (3 classes x 5 sample JPEGs per split, 2 shards per
  split) that the test may corrupt."""
  shutil.copytree(make_data_dir(per_class=5), tmp_path / "data")
  return str(tmp_path / "data")


def record_offsets(path):
  """[(offset of the record's data, its length)] from the TFRecord framing:
  uint64 length, uint32 masked CRC of the length, data, uint32 masked CRC of the data."""
  data, out, pos = open(path, "rb").read(), [], 0
  while pos < len(data):
    (length,) = struct.unpack("<Q", data[pos:pos + 8])
    out.append((pos + 12, length))
    pos += 12 + length + 4
  return out


def edit_info(data_dir, change):
  path = os.path.join(data_dir, features.INFO_FILE)
  info = json.load(open(path))
  change(info)
  json.dump(info, open(path, "w"))


def rewrite_shard(path, change):
  """Rewrites a shard with change(index, serialized) -> serialized applied to each record."""
  records = [r.numpy() for r in tf.data.TFRecordDataset(path)]
  with tf.io.TFRecordWriter(path) as w:
    for i, r in enumerate(records):
      w.write(change(i, r))


def reencode(serialized, **override):
  ex = features.parse_single(serialized)
  fields = dict(key=ex[features.KEY].numpy(), image=ex[features.IMAGE].numpy(),
                image_format=ex[features.FORMAT].numpy().decode(),
                height=int(ex[features.HEIGHT]), width=int(ex[features.WIDTH]),
                label=int(ex[features.LABEL]))
  fields.update(override)
  return features.encode_example(**fields)


def test_a_good_data_dir_passes_with_exact_counts(fresh_data_dir):
  data_dir = fresh_data_dir
  report = verify.check_data_dir(data_dir, decode=True)
  assert report.ok and report.errors == []
  info = json.load(open(os.path.join(data_dir, features.INFO_FILE)))
  for name, split in info["splits"].items():
    assert report.splits[name].num_records == split["num_examples"] > 0
    assert report.splits[name].per_class == split["per_class"]


def test_a_flipped_byte_is_a_crc_error_naming_shard_and_record(fresh_data_dir):
  data_dir = fresh_data_dir
  path = os.path.join(data_dir, SHARD)
  offset, length = record_offsets(path)[3]
  data = bytearray(open(path, "rb").read())
  data[offset + length // 2] ^= 0x01  # Inside the image bytes: parses fine, CRC does not match.
  open(path, "wb").write(bytes(data))
  for decode in (False, True):
    report = verify.verify_data_dir(data_dir, decode=decode)
    assert not report.ok
    assert len(report.errors) == 1, report.errors
    assert f"{path}: record 3: cannot be read, the shard is corrupt" in report.errors[0]
    assert "DataLossError: corrupted record" in report.errors[0]
    assert report.splits["train"].num_records < report.splits["train"].expected
  # What the trainer calls: the same message, raised before any training step.
  with pytest.raises(verify.DataError, match=rf"{SHARD}: record 3: cannot be read") as e:
    verify.check_data_dir(data_dir, splits=("train", "validation"))
  assert isinstance(e.value, dataset_info.DatasetInfoError)
  # Other splits are untouched: checking only them passes.
  assert verify.check_data_dir(data_dir, splits=("validation", "test")).ok


def test_counts_that_disagree_with_dataset_info(fresh_data_dir):
  data_dir = fresh_data_dir
  def more_test(info):
    info["splits"]["test"]["num_examples"] += 1
  edit_info(data_dir, more_test)
  report = verify.verify_data_dir(data_dir, decode=False)
  assert report.errors == ["split test: 15 records in 2 shards, but tfrecords_info.json says "
                           "num_examples=16"]

  def swap_classes(info):
    info["splits"]["test"]["num_examples"] -= 1
    info["splits"]["test"]["per_class"] = [6, 4, 5]
  edit_info(data_dir, swap_classes)
  report = verify.verify_data_dir(data_dir, decode=False)
  assert report.errors == ["split test: records per class [5, 5, 5], but tfrecords_info.json "
                           "says per_class=[6, 4, 5]"]


def test_a_label_out_of_range_is_named(fresh_data_dir):
  data_dir = fresh_data_dir
  path = os.path.join(data_dir, SHARD)
  rewrite_shard(path, lambda i, r: reencode(r, label=7) if i == 2 else r)
  report = verify.verify_data_dir(data_dir, decode=False)
  [error] = [e for e in report.errors if "label 7" in e]
  assert error.startswith(f"{path}: record 2 (key 'train/")
  assert "label 7 is outside 0..2 (3 classes in tfrecords_info.json)" in error
  # The per-class count of train is now short by one, and says so.
  assert any(e.startswith("split train: records per class") for e in report.errors)


def test_an_image_that_does_not_decode_is_named(fresh_data_dir):
  data_dir = fresh_data_dir
  path = os.path.join(data_dir, SHARD)

  def cut_image(i, r):
    if i != 1:
      return r
    image = features.parse_single(r)[features.IMAGE].numpy()
    return reencode(r, image=image[: len(image) // 3])
  rewrite_shard(path, cut_image)
  # In the other shard (decoded in one parallel pass): a record whose size fields lie.
  other = os.path.join(data_dir, features.shard_name("train", 1, 2))
  rewrite_shard(other, lambda i, r: reencode(r, height=16) if i == 4 else r)
  assert verify.verify_data_dir(data_dir, decode=False).ok  # Only decoding can see these.
  report = verify.verify_data_dir(data_dir, decode=True)
  assert len(report.errors) == 2, report.errors
  assert report.errors[0].startswith(f"{path}: record 1 (key 'train/")
  assert "image does not decode" in report.errors[0]
  assert report.errors[1].startswith(f"{other}: record 4 (key 'train/")
  assert report.errors[1].endswith("image decodes to (32, 32, 3), but the record says "
                                   "height=16 width=32")


def test_raw_records_pass_and_a_raw_record_of_the_wrong_length_is_named(make_data_dir,
                                                                         tmp_path):
  data_dir = str(tmp_path / "raw")
  shutil.copytree(make_data_dir(per_class=5, image_format=features.RAW), data_dir)
  assert verify.verify_data_dir(data_dir, decode=True).ok
  path = os.path.join(data_dir, SHARD)

  def damage(i, r):
    image = features.parse_single(r)[features.IMAGE].numpy()
    if i == 1:
      return reencode(r, image=image[:-3])  # a pixel short
    if i == 3:
      return reencode(r, height=16)  # its size fields lie
    return r
  rewrite_shard(path, damage)
  for decode in (False, True):  # A length is checked without decoding too.
    report = verify.verify_data_dir(data_dir, decode=decode)
    assert len(report.errors) == 2, report.errors
    assert report.errors[0].startswith(f"{path}: record 1 (key 'train/")
    assert report.errors[0].endswith("raw image of 3069 bytes, but the record says height=32 "
                                     "width=32: 3072 bytes (height * width * 3)")
    assert report.errors[1].startswith(f"{path}: record 3 (key 'train/")
    assert "raw image of 3072 bytes, but the record says height=16 width=32" in report.errors[1]


def test_a_record_format_that_disagrees_with_image_format_is_named(fresh_data_dir):
  # JPEG records under metadata that says raw: the trainer would read them with decode_raw.
  edit_info(fresh_data_dir, lambda info: info.update(image_format="raw"))
  report = verify.verify_data_dir(fresh_data_dir, splits=["test"], decode=False)
  assert len(report.errors) == 15, report.errors
  assert report.errors[0].endswith("image format 'jpeg', but tfrecords_info.json says "
                                   "image_format='raw'")


def test_missing_info_or_split_raise_dataset_info_errors(fresh_data_dir, tmp_path):
  data_dir = fresh_data_dir
  with pytest.raises(dataset_info.DatasetInfoError,
                     match="has no split 'holdout'"):
    verify.verify_data_dir(data_dir, splits=["holdout"])
  os.remove(os.path.join(data_dir, features.shard_name("test", 1, 2)))
  with pytest.raises(dataset_info.DatasetInfoError, match="2 test shards but 1 are missing"):
    verify.verify_data_dir(data_dir)


def test_cli_exit_codes_and_messages(fresh_data_dir, tmp_path, capsys):
  data_dir = fresh_data_dir
  path = os.path.join(data_dir, SHARD)
  offset, _ = record_offsets(path)[0]
  data = bytearray(open(path, "rb").read())
  data[offset + 5] ^= 0x80
  open(path, "wb").write(bytes(data))
  # The command as a user types it (absl flags, exit status); TensorFlow's import costs ~4 s.
  done = subprocess.run([sys.executable, "-m", verify_tfrecords.__name__, data_dir,
                         "--nodecode"], capture_output=True, text=True, cwd=testdata.REPO,
                        timeout=120)
  assert done.returncode == 1, done.stderr[-2000:]
  assert f"ERROR {path}: record 0: cannot be read, the shard is corrupt" in done.stdout
  assert "FAILED" in done.stdout and "Traceback" not in done.stderr
  # TensorFlow's start-up notices are held back (cli.Command(tensorflow=True)): stderr is
  # empty, the report is on stdout.
  assert done.stderr == "", done.stderr[-2000:]
  # The other outcomes through the function main() returns, in this process.
  empty = tmp_path / "empty"
  empty.mkdir()
  assert verify_tfrecords.run(str(empty)) == 2
  assert f"--data_dir={empty}: {empty}/tfrecords_info.json not found" in capsys.readouterr().err
  os.remove(path)
  testdata.write_data_dir(data_dir, per_class=5)
  assert verify_tfrecords.run(data_dir, splits=["train"]) == 0
  out = capsys.readouterr().out
  assert re.match(rf"{re.escape(data_dir)}: OK \(0 MB of shards in \d+\.\d s\)\n  train ", out), out
  # A usage mistake: one line, exit status 1.
  with pytest.raises(SystemExit, match=r"^tools\.verify_tfrecords: error: expected one data "):
    verify_tfrecords.COMMAND.call(["--nodecode"])
