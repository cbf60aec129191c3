"""The Beam job end to end on the DirectRunner: files, tfrecords_info.json, counters, records."""

import collections
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from pipeline import archives
from pipeline import build_tfrecords
from pipeline import dataset_info
from pipeline import features
from pipeline import tfds_metadata
from pipeline import verify
from tests import testdata
from tests.pipeline import cifar_archive


def split_records(data_dir, info, split):
  """The serialized records of a split, from the shards dataset_info lists."""
  files = [os.path.join(data_dir, s) for s in info["splits"][split]["shards"]]
  return [r.numpy() for r in tf.data.TFRecordDataset(files)]


def read_split(data_dir, info, split):
  """All parsed records of a split."""
  return [features.parse_single(r) for r in split_records(data_dir, info, split)]


def run(tmp_path, **kwargs):
  config = build_tfrecords.JobConfig(output_dir=str(tmp_path / "out"), **kwargs)
  return config.output_dir, build_tfrecords.run_job(config)


def test_image_dir_job_writes_counted_shards_and_metadata(tmp_path):
  out, result = run(tmp_path, source="image_dir", image_dir=str(testdata.SAMPLE_DIR),
                    classes=("cat", "dog", "ship"), num_shards=2, validation_fraction=0.2)
  assert result.exit_code == 0
  info = json.load(open(os.path.join(out, features.INFO_FILE)))
  assert info == result.info
  assert info["class_names"] == ["cat", "dog", "ship"]
  assert info["image_shape"] == [32, 32, 3]
  assert sorted(os.listdir(out)) == sorted(
      [features.INFO_FILE, features.REJECTED_FILE, *tfds_metadata.FILES]
      + [features.shard_name(s, i, 2) for s in ("train", "validation", "test") for i in (0, 1)])
  splits = info["splits"]
  assert splits["train"]["num_examples"] + splits["validation"]["num_examples"] == 120
  assert splits["test"]["num_examples"] == 30 and splits["test"]["per_class"] == [10, 10, 10]
  keys = {}
  for split in splits:
    records = read_split(out, info, split)
    assert len(records) == splits[split]["num_examples"]
    labels = collections.Counter(int(r[features.LABEL]) for r in records)
    assert [labels[i] for i in range(3)] == splits[split]["per_class"]
    keys[split] = {r[features.KEY].numpy().decode() for r in records}
    assert len(keys[split]) == len(records)
    # Unresized JPEG files keep their original bytes (the default --image_format=source,
    # which tfrecords_info.json leaves unsaid, as before the flag).
    assert {r[features.FORMAT].numpy() for r in records} == {b"jpeg"}
    key = records[0][features.KEY].numpy().decode()  # e.g. train/cat/0003.jpg
    assert records[0][features.IMAGE].numpy() == (testdata.SAMPLE_DIR / key).read_bytes()
  assert "image_format" not in info
  assert not keys["train"] & keys["validation"] and all(k.startswith("test/")
                                                      for k in keys["test"])
  # Beam counters agree with the files.
  c = result.counters
  for split in splits:
    assert c[f"examples/{split}"] == splits[split]["num_examples"]
  assert c["examples/test/ship"] == 10
  assert c["excluded/class_subset"] == 500 - 150
  # No pixel statistics: no model used them (the reader still accepts older files with them).
  assert "train_mean" not in info and "train_std" not in info
  # The written metadata is what the reader reads and writes back, field for field.
  assert dataset_info.load(out).to_json() == info
  # A rerun splits the same way.
  _, again = run(tmp_path, source="image_dir", image_dir=str(testdata.SAMPLE_DIR),
                 classes=("cat", "dog", "ship"), num_shards=2, validation_fraction=0.2)
  assert {r[features.KEY].numpy().decode() for r in read_split(out, again.info, "validation")
          } == keys["validation"]


def test_path_list_job_resizes_to_png(tmp_path):
  out, result = run(tmp_path, source="path_list", path_list=str(testdata.SAMPLE_CSV),
                    num_classes=2, class_seed=1, image_size=16, test_fraction=0.0)
  info = result.info
  assert result.exit_code == 0 and len(info["class_names"]) == 2
  assert info["image_shape"] == [16, 16, 3]
  assert info["splits"]["test"]["num_examples"] == 20  # the CSV's own split column
  record = read_split(out, info, "train")[0]
  assert record[features.FORMAT].numpy() == b"png"
  assert tf.io.decode_png(record[features.IMAGE]).shape == (16, 16, 3)
  assert info["source"] == f"path_list:{testdata.SAMPLE_CSV}"


@pytest.mark.skipif(not testdata.CIFAR100_META.exists(), reason="needs ../shared/data meta")
def test_cifar100_job_is_lossless_and_keeps_coarse_labels(tmp_path):
  path, train, fine, test = cifar_archive.build(str(tmp_path / "c.tar.gz"), 12, 6)
  out, result = run(tmp_path, source="cifar100", cifar100_archive=path,
                    archive_md5=archives.file_md5(path), validation_fraction=0.0)
  info = result.info
  assert len(info["class_names"]) == 100 and len(info["coarse_class_names"]) == 20
  assert info["splits"]["train"]["num_examples"] == 12
  assert info["splits"]["test"]["num_examples"] == 6
  by_key = {r[features.KEY].numpy().decode(): r for r in read_split(out, info, "train")}
  for i in range(12):
    r = next(v for k, v in by_key.items() if k.startswith(f"train/{i:05d}/"))
    np.testing.assert_array_equal(tf.io.decode_png(r[features.IMAGE]).numpy(), train[i])
    assert int(r[features.LABEL]) == fine[i]
    assert int(r[features.COARSE_LABEL]) == fine[i] // 5


def test_tfds_source_with_mock_data(tmp_path):
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=8):
    out, result = run(tmp_path, source="tfds:cifar10", validation_fraction=0.25)
  info = result.info
  assert info["source"] == "tfds:cifar10" and len(info["class_names"]) == 10
  assert info["splits"]["test"]["num_examples"] == 8
  assert info["splits"]["train"]["num_examples"] + info["splits"]["validation"][
      "num_examples"] == 8
  assert len(read_split(out, info, "test")) == 8


def test_cli_passes_beam_options_through_and_names_bad_input(tmp_path):
  out = tmp_path / "cli"
  cmd = [sys.executable, "-m", "pipeline.build_tfrecords", "--source=image_dir",
         f"--image_dir={testdata.SAMPLE_DIR}", f"--output_dir={out}", "--classes=frog",
         "--runner=DirectRunner", "--direct_running_mode=multi_threading",
         "--direct_num_workers=2"]
  done = subprocess.run(cmd, capture_output=True, text=True, cwd=testdata.REPO, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "train" in done.stdout and "rejected          0" in done.stdout
  assert json.load(open(out / features.INFO_FILE))["class_names"] == ["frog"]
  assert "--direct_num_workers=2" in json.load(open(out / features.INFO_FILE))["command"]
  bad = subprocess.run(cmd[:4] + [f"--image_dir={tmp_path}/nope", f"--output_dir={out}"],
                       capture_output=True, text=True, cwd=testdata.REPO, timeout=120)
  assert bad.returncode == 2 and f"--image_dir={tmp_path}/nope: no such directory" in bad.stderr
  assert glob.glob(str(out / "*.tfrecord-*"))  # A refused run leaves the last good output.
  unset = subprocess.run(cmd[:3], capture_output=True, text=True, cwd=testdata.REPO, timeout=120)
  assert unset.returncode == 1, unset.stderr[-2000:]
  assert unset.stderr.strip().splitlines()[-1] == (
      "pipeline.build_tfrecords: error: --source is required; --output_dir is required")
  assert "Traceback" not in unset.stderr
  # Flag mistakes are status 1, before the job: a typo that Beam would drop (and the job run
  # without it), and a source without the flag that names its input.
  typo = subprocess.run(cmd + ["--num_shard=1"], capture_output=True, text=True,
                        cwd=testdata.REPO, timeout=120)
  assert typo.returncode == 1, typo.stderr[-2000:]
  assert typo.stderr.strip().splitlines()[-1] == (
      "pipeline.build_tfrecords: error: unknown argument --num_shard=1 (did you mean "
      "--num_shards?): neither this job's flags (--helpfull) nor Beam's pipeline options")
  no_dir = subprocess.run(cmd[:4] + [f"--output_dir={out}"], capture_output=True, text=True,
                          cwd=testdata.REPO, timeout=120)
  assert no_dir.returncode == 1 and no_dir.stderr.strip().splitlines()[-1] == (
      "pipeline.build_tfrecords: error: --source=image_dir needs --image_dir=<root>")
  assert json.load(open(out / features.INFO_FILE))["class_names"] == ["frog"]  # untouched


def test_shards_mix_classes_rather_than_running_through_them_in_folder_order(tmp_path):
  out, result = run(tmp_path, source="image_dir", image_dir=str(testdata.SAMPLE_DIR),
                    validation_fraction=0.0, num_shards=1)
  labels = [int(r[features.LABEL]) for r in read_split(out, result.info, "train")]
  assert len(labels) == 400
  # Folder order would give 40 airplanes, then 40 automobiles, ...: count label changes.
  changes = sum(a != b for a, b in zip(labels, labels[1:]))
  assert changes > 300, changes
  assert len(set(labels[:40])) >= 8


def test_two_workers_write_the_same_records_and_metadata_as_one(tmp_path):
  records, infos = {}, {}
  for name, argv in (("one", []), ("two", ["--direct_running_mode=multi_threading",
                                           "--direct_num_workers=2"])):
    config = build_tfrecords.JobConfig(
        output_dir=str(tmp_path / name), source="image_dir", image_dir=str(testdata.SAMPLE_DIR),
        classes=("cat", "ship"), num_shards=2)
    info = build_tfrecords.run_job(config, argv).info
    records[name] = {s: sorted(split_records(config.output_dir, info, s)) for s in info["splits"]}
    del info["command"]
    infos[name] = info
  assert records["one"] == records["two"] and infos["one"] == infos["two"]
  assert sum(len(r) for r in records["one"].values()) == 100


def test_raw_records_hold_the_pixels_of_the_png_records(tmp_path):
  # One class, resized for one of the runs too, so that the pixels come from every path
  # (kept JPEG files decoded by PIL, resized ones).
  outputs = {}
  for image_format in ("png", "raw"):
    for image_size in (0, 20):
      config = build_tfrecords.JobConfig(
          output_dir=str(tmp_path / f"{image_format}{image_size}"), source="image_dir",
          image_dir=str(testdata.SAMPLE_DIR), classes=("frog",), num_shards=1,
          image_format=image_format, image_size=image_size)
      result = build_tfrecords.run_job(config)
      assert result.exit_code == 0
      outputs[(image_format, image_size)] = config.output_dir, result.info
  for image_size in (0, 20):
    (png_dir, png_info), (raw_dir, raw_info) = (outputs[(f, image_size)]
                                                for f in ("png", "raw"))
    assert png_info["image_format"] == "png" and raw_info["image_format"] == "raw"
    assert dataset_info.load(raw_dir).image_format == "raw"
    side = image_size or 32
    assert raw_info["image_shape"] == [side, side, 3]
    for split in png_info["splits"]:
      png = {r[features.KEY].numpy(): r for r in read_split(png_dir, png_info, split)}
      raw = {r[features.KEY].numpy(): r for r in read_split(raw_dir, raw_info, split)}
      assert png.keys() == raw.keys() and png
      for key, r in raw.items():
        assert r[features.FORMAT].numpy() == b"raw"
        assert png[key][features.FORMAT].numpy() == b"png"
        assert len(r[features.IMAGE].numpy()) == side * side * 3
        np.testing.assert_array_equal(
            features.decode_raw(r[features.IMAGE], r[features.HEIGHT], r[features.WIDTH]),
            tf.io.decode_png(png[key][features.IMAGE]))
  # The raw data directory passes the verifier.
  assert verify.verify_data_dir(outputs[("raw", 0)][0], decode=True).ok
  # TFDS reads the raw records as bytes (its Image feature decodes JPEG and PNG only).
  import tensorflow_datasets as tfds
  raw_dir, raw_info = outputs[("raw", 0)]
  example = next(iter(tfds.builder_from_directory(raw_dir).as_dataset(split="test")))
  by_key = {r[features.KEY].numpy(): r for r in read_split(raw_dir, raw_info, "test")}
  assert example["image"]["encoded"].numpy() == by_key[
      example[features.KEY].numpy()][features.IMAGE].numpy()
