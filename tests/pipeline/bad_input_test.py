"""Bad input through the real Beam job (DirectRunner): every good image comes out exactly once,
every bad one is in rejected.csv with its reason, counted, and nothing crashes.

The inputs are made here from the shipped sample's real JPEGs: cut, flipped, emptied,
converted to other modes with PIL (and to 16-bit RGB with TensorFlow, as PIL cannot write it).
"""

import csv
import io
import json
import logging
import os
import pickle
import re
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pipeline import build_tfrecords
from pipeline import features
from pipeline import images
from pipeline import job_metadata
from pipeline import sources
from pipeline import tfds_metadata
from pipeline import verify
from tests import testdata
from tests.pipeline import cifar_archive

CLASSES = ("cat", "dog", "ship")


def sample(name, index):
  """(JPEG bytes, pixels) of the index-th train image of a class in the shipped sample."""
  path = testdata.sample_files("train", [name])[index][0]
  data = path.read_bytes()
  return data, np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def encoded(img, fmt, **kwargs):
  buf = io.BytesIO()
  img.save(buf, format=fmt, **kwargs)
  return buf.getvalue()


def flip(data, at):
  data = bytearray(data)
  data[at] ^= 0xFF
  return bytes(data)


def converted_inputs():
  """{file name: (bytes, class, kind, expected RGB pixels or None)}: images to convert."""
  jpg, px = sample("dog", 0)
  rgb = Image.fromarray(px)
  gray = np.asarray(rgb.convert("L"))
  sixteen = (px.astype(np.uint16) * 257)  # 8-bit values spread over 0..65535 exactly.
  palette = rgb.convert("P")
  return {
      "gray.png": (encoded(rgb.convert("L"), "PNG"), "dog", "grayscale",
                   np.repeat(gray[:, :, None], 3, axis=2)),
      "rgba.png": (encoded(rgb.convert("RGBA"), "PNG"), "dog", "rgba", px),  # alpha dropped
      "palette.png": (encoded(palette, "PNG"), "dog", "palette",
                      np.asarray(palette.convert("RGB"))),
      "cmyk.jpg": (encoded(rgb.convert("CMYK"), "JPEG", quality=95), "dog", "cmyk", None),
      "gray16.png": (encoded(Image.fromarray(sixteen[:, :, 0]), "PNG"), "ship", "16bit",
                     np.repeat(px[:, :, :1], 3, axis=2)),
      "rgb16.png": (tf.io.encode_png(sixteen).numpy(), "ship", "16bit", px),
  }


def bad_files():
  """{file name: (bytes, expected reason)}: files that must be rejected by the job."""
  jpg, px = sample("cat", 9)
  png = encoded(Image.fromarray(px), "PNG")
  idat = png.index(b"IDAT")
  return {
      "empty.jpg": (b"", "empty_file"),
      "truncated.jpg": (jpg[: len(jpg) // 2], "truncated_image"),
      "header_only.jpg": (jpg[:20], "truncated_image"),
      "corrupt_data.png": (flip(png, idat + 20), "corrupt_image"),  # zlib stream broken
      "corrupt_header.png": (flip(png, 16), "corrupt_image"),  # IHDR width, CRC mismatch
      "no_iend.png": (png[:-12], "truncated_image"),  # PIL reads it; TensorFlow refuses it
      "notes.jpg": (b"this is not an image\n" * 20, "not_an_image"),
  }


def write_inputs(root):
  """Writes good, converted and bad files and a path list over them. Returns
  (csv path, {good key: (class, kind, pixels or None)}, {rejected source: reason})."""
  root.mkdir(parents=True, exist_ok=True)
  good, rejected, rows = {}, {}, []
  for name in CLASSES:
    for i in range(4):
      data, px = sample(name, i)
      rel = f"{name}/{i}.jpg"
      os.makedirs(root / name, exist_ok=True)
      (root / rel).write_bytes(data)
      good[rel] = (name, None, px)
      rows.append(f"{rel},{name},train")
  for file_name, (data, name, kind, px) in converted_inputs().items():
    (root / file_name).write_bytes(data)
    good[file_name] = (name, kind, px)
    rows.append(f"{file_name},{name},train")
  for file_name, (data, reason) in bad_files().items():
    (root / file_name).write_bytes(data)
    rejected[f"{root}/{file_name}"] = reason
    rows.append(f"{file_name},cat,train")
  csv_path = root / "list.csv"
  (root / "horse.jpg").write_bytes(sample("cat", 8)[0])
  planned = [  # (row, reason): rejected while planning, before any file is read
      ("missing.jpg,cat,train", "missing_file"),     # (found missing by the job, in fact)
      ("horse.jpg,horse,test", "unknown_label"),     # not among --class_names_file's classes
      ("./cat/1.jpg,cat,train", "duplicate_path"),   # the same file as cat/1.jpg
      ("dog/1.jpg,dog,train,extra", "malformed_row"),  # too many columns
      ("dog/2.jpg,,train", "malformed_row"),         # no label
      ("dog/3.jpg,dog,holdout", "malformed_row"),    # a split that does not exist
      ("seven.jpg,7,train", "label_out_of_range"),   # an integer past --class_names_file's 3
      ("/dev/zero,cat,train", "not_a_regular_file"),  # used to be read until MemoryError
      ("dog,dog,train", "not_a_regular_file"),       # a folder
  ]
  for row, reason in planned:
    rows.append(row)
    line = len(rows) + 1  # line 1 is the header
    path = row.split(",")[0]
    source = f"{csv_path}:{line}" if reason == "malformed_row" else os.path.normpath(
        path if os.path.isabs(path) else f"{root}/{path}")
    rejected[source] = reason
  text = "path,label,split\n" + "\n".join(rows) + "\n"
  # A byte-order mark (spreadsheet exports) must not hide the `path` column, and a row whose
  # bytes are not UTF-8 (a Latin-1 file name) is rejected rather than a decode crash.
  latin1 = "caf\xe9.jpg,cat,train\n".encode("latin-1")
  csv_path.write_bytes(b"\xef\xbb\xbf" + text.encode() + latin1)
  rejected[f"{csv_path}:{len(rows) + 2}"] = "malformed_row"
  (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
  return str(csv_path), good, rejected


def read_all_records(out, info):
  records = []
  for split in info["splits"].values():
    files = [os.path.join(out, s) for s in split["shards"]]
    records += [features.parse_single(r) for r in tf.data.TFRecordDataset(files)]
  return records


def read_rejected(out):
  with open(os.path.join(out, features.REJECTED_FILE), newline="") as f:
    rows = list(csv.reader(f))
  assert rows[0] == ["source", "reason", "detail"]
  return rows[1:]


def test_path_list_with_every_kind_of_bad_input(tmp_path, capsys):
  csv_path, good, rejected = write_inputs(tmp_path / "in")
  out = str(tmp_path / "out")
  config = build_tfrecords.JobConfig(
      source="path_list", path_list=csv_path, class_names_file=str(tmp_path / "in/classes.txt"),
      output_dir=out, num_shards=2, validation_fraction=0.2, test_fraction=0.2,
      max_reject_fraction=1.0)
  result = build_tfrecords.run_job(config)
  assert result.exit_code == 0
  info = json.load(open(os.path.join(out, features.INFO_FILE)))
  assert info["class_names"] == list(CLASSES)

  # Every good image is in the output exactly once, with its label and its pixels.
  records = read_all_records(out, info)
  keys = [r[features.KEY].numpy().decode() for r in records]
  assert sorted(keys) == sorted(good)
  for r in records:
    name, kind, px = good[r[features.KEY].numpy().decode()]
    assert int(r[features.LABEL]) == CLASSES.index(name)
    image = tf.io.decode_image(r[features.IMAGE]).numpy()
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    if kind is None:
      assert r[features.FORMAT].numpy() == b"jpeg"  # original bytes kept
    else:
      assert r[features.FORMAT].numpy() == b"png"
      if px is not None:
        np.testing.assert_array_equal(image, px, err_msg=kind)
      else:  # CMYK went through JPEG: close, not exact.
        assert np.abs(image.astype(int) - sample("dog", 0)[1]).mean() < 8

  # Every bad one is in rejected.csv once, with the right reason.
  rows = read_rejected(out)
  assert {source: reason for source, reason, _ in rows} == rejected
  assert len(rows) == len(rejected)
  details = {source: detail for source, _, detail in rows}
  assert details[f"{tmp_path}/in/cat/1.jpg"] == "line 29 repeats line 3"
  assert details[f"{csv_path}:36"].startswith("not valid UTF-8: caf")
  assert details["/dev/zero"] == "a character device"

  # The counters, tfrecords_info.json and the printed summary agree.
  by_reason = {}
  for reason in rejected.values():
    by_reason[reason] = by_reason.get(reason, 0) + 1
  assert {k[len("rejected/"):]: v for k, v in result.counters.items()
          if k.startswith("rejected/")} == by_reason
  assert info["rejected"]["by_reason"] == by_reason
  assert info["rejected"]["total"] == len(rejected)
  kinds = {"grayscale": 1, "rgba": 1, "palette": 1, "cmyk": 1, "16bit": 2}
  assert info["converted"] == kinds
  assert {k[len("converted/"):]: v for k, v in result.counters.items()
          if k.startswith("converted/")} == kinds
  assert sum(s["num_examples"] for s in info["splits"].values()) == len(good)
  printed = capsys.readouterr().out
  assert re.search(rf"rejected +{len(rejected)} \(", printed) and "'missing_file': 1" in printed
  assert "converted (stored as PNG): {'16bit': 2, 'cmyk': 1" in printed

  # And the trainer-side check reads it all back.
  assert verify.check_data_dir(out, decode=True).ok


def test_image_folder_with_bad_files_fails_the_job_over_max_reject_fraction(tmp_path, caplog):
  root = tmp_path / "images"
  for name in ("cat", "ship"):
    os.makedirs(root / name)
    for i in range(3):
      (root / name / f"{i}.jpg").write_bytes(sample(name, i)[0])
  expected = {}
  for file_name, (data, reason) in bad_files().items():
    (root / "cat" / file_name).write_bytes(data)
    expected[f"{root}/cat/{file_name}"] = reason
  (root / "stray.jpg").write_bytes(sample("cat", 5)[0])  # not in a class folder
  expected[f"{root}/stray.jpg"] = "not_in_class_folder"
  out = tmp_path / "out"
  out.mkdir()
  (out / features.INFO_FILE).write_text("{}")  # A previous run's: must not survive,
  (out / features.LEGACY_INFO_FILE).write_text("{}")  # nor TFDS's, nor one of before the rename.
  caplog.set_level(logging.ERROR)
  result = build_tfrecords.run_job(build_tfrecords.JobConfig(
      source="image_dir", image_dir=str(root), output_dir=str(out), num_shards=1))
  assert result.exit_code == 1
  assert {s: r for s, r, _ in read_rejected(str(out))} == expected
  # No tfrecords_info.json, so the trainer cannot use it, and no TFDS metadata, so tfds
  # cannot either; the metadata says why.
  assert not (out / features.INFO_FILE).exists()
  assert not any((out / name).exists() for name in tfds_metadata.FILES)
  failed = json.load(open(out / job_metadata.FAILED_INFO_FILE))
  assert failed["rejected"]["total"] == len(expected) == 8
  assert failed["rejected"]["fraction"] == pytest.approx(8 / 14, abs=1e-6)
  assert sum(s["num_examples"] for s in failed["splits"].values()) == 6
  assert result.counters["rejected/truncated_image"] == 3
  message = " ".join(r.getMessage() for r in caplog.records)
  assert "57.14% of the inputs were rejected, more than --max_reject_fraction=0.01" in message
  assert f"see {out}/rejected.csv" in message


def png_header_only(width, height):
  """A PNG that claims width x height 8-bit gray pixels (valid chunks, tiny data)."""
  def chunk(kind, payload):
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload)))
  ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))
          + chunk(b"IEND", b""))


def test_oversized_images_are_rejected_before_decoding():
  # Over PIL's MAX_IMAGE_PIXELS (89M) PIL only warns; over twice that it raises. Both reject.
  for side in (10_000, 20_000):
    with pytest.raises(images.BadImage) as e:
      images.prepare(png_header_only(side, side))
    assert e.value.reason == "image_too_large"


@pytest.mark.skipif(not testdata.CIFAR100_META.exists(), reason="needs ../shared/data meta")
def test_cifar_archive_bad_contents_are_refused_by_name_before_the_job(tmp_path):
  def job(archive, md5=""):
    return build_tfrecords.run_job(build_tfrecords.JobConfig(
        source="cifar100", cifar100_archive=archive, archive_md5=md5,
        output_dir=str(tmp_path / "out")))

  good, *_ = cifar_archive.build(str(tmp_path / "good.tar.gz"), 4, 2)
  with pytest.raises(sources.SourceError, match="md5 is [0-9a-f]{32}, expected 0{32}"):
    job(good, md5="0" * 32)
  # Cut short (the last member loses its end).
  cut = tmp_path / "cut.tar.gz"
  cut.write_bytes(open(good, "rb").read()[:-200])
  with pytest.raises(sources.SourceError, match="cut.tar.gz: not a complete tar.gz archive"):
    job(str(cut))

  class Exploit:
    def __reduce__(self):
      return (os.system, (f"touch {tmp_path}/pwned",))
  meta = testdata.CIFAR100_META.read_bytes()
  pixels = cifar_archive.sample_pixels("train", 2)
  test_pickle = cifar_archive.batch_pickle(pixels, [1, 2], [0, 0], "test")
  evil = cifar_archive.write_archive(str(tmp_path / "evil.tar.gz"), {
      "meta": meta, "train": pickle.dumps({b"data": Exploit()}, protocol=2),
      "test": test_pickle})
  with pytest.raises(sources.SourceError,
                     match=r"evil.tar.gz: train: refusing to load posix.system"):
    job(evil)
  assert not (tmp_path / "pwned").exists()
  # A label outside the 100 classes would otherwise vanish as if excluded by a class subset.
  wrong = cifar_archive.write_archive(str(tmp_path / "wrong.tar.gz"), {
      "meta": meta, "train": cifar_archive.batch_pickle(pixels, [3, 100], [0, 20], "train"),
      "test": test_pickle})
  with pytest.raises(sources.SourceError, match=r"train fine_labels\[1\] = 100 is not a class "
                                                r"index 0..99"):
    job(wrong)
  assert not os.path.exists(tmp_path / "out")  # Refused before the job wrote anything.


def test_a_path_list_rejected_entirely_while_planning_still_reports(tmp_path):
  (tmp_path / "classes.txt").write_text("cat\n")
  csv_path = tmp_path / "list.csv"
  csv_path.write_text("path,label,split\na.jpg,cat\nb.jpg,dog,train\n")
  out = tmp_path / "out"
  result = build_tfrecords.run_job(build_tfrecords.JobConfig(
      source="path_list", path_list=str(csv_path), class_names_file=str(tmp_path / "classes.txt"),
      output_dir=str(out)))
  assert result.exit_code == 1
  assert sorted((s, r) for s, r, _ in read_rejected(str(out))) == sorted([
      (f"{csv_path}:2", "malformed_row"), (f"{tmp_path}/b.jpg", "unknown_label")])
  assert json.load(open(out / job_metadata.FAILED_INFO_FILE))["rejected"]["fraction"] == 1.0
