"""gs:// for real: the Beam job against `gcp-storage-emulator` on 127.0.0.1.

Images and the path list live in a bucket; the job reads them through gcsfs (fsspec) and writes
shards, tfrecords_info.json, TFDS's metadata and rejected.csv to gs:// through Beam's GCS file
system. The output
is read back through gcsfs and parsed with pipeline.features.

TensorFlow's own gs:// (tf.io.gfile, TFRecordDataset: what the trainer reads with) has
https://www.googleapis.com/storage/v1/ built in and cannot target the emulator; the last test
checks only that a gs:// data_dir goes to TensorFlow's GCS file system and fails with a named
error when it is unreachable. See docs/data.md.
"""

import json
import os

from tests import gcs_emulator  # Before anything imports gcsfs (it reads an env var at import).

import fsspec
import pytest
import tensorflow as tf

from pipeline import archives
from pipeline import build_tfrecords
from pipeline import dataset_info
from pipeline import features
from pipeline import tfds_metadata
from pipeline import sources
from pipeline import verify
from tests import testdata

BUCKET = "pipeline-test"
CLASSES = ("cat", "ship")


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  with gcs_emulator.running(tmp_path_factory.mktemp("gcs"), bucket=BUCKET) as emulator:
    yield emulator


def upload_inputs(gcs):
  """Sample JPEGs under gs://BUCKET/images/<class>/, one cut JPEG, and a path list mixing
  gs:// and relative paths. Returns (csv url, {good key: class}, {rejected source: reason})."""
  fs = gcs.fs()
  rows, good = [], {}
  for i, (path, name) in enumerate(testdata.sample_files("train", CLASSES, 4)):
    rel = f"images/{name}/{path.name}"
    fs.pipe(gcs.url(rel), path.read_bytes())
    if i % 2:  # Relative to the CSV's folder: read as gs://BUCKET/<rel>.
      rows.append(f"{rel},{name}")
      good[rel] = name
    else:
      rows.append(f"{gcs.url(rel)},{name}")
      good[gcs.url(rel)] = name
  cut = testdata.sample_files("train", ["cat"])[9][0].read_bytes()
  fs.pipe(gcs.url("images/cat/cut.jpg"), cut[: len(cut) // 2])
  rows += ["images/cat/cut.jpg,cat", f"{gcs.url('images/cat/absent.jpg')},cat"]
  rejected = {gcs.url("images/cat/cut.jpg"): "truncated_image",
              gcs.url("images/cat/absent.jpg"): "missing_file"}
  fs.pipe(gcs.url("list.csv"), ("path,label\n" + "\n".join(rows) + "\n").encode())
  return gcs.url("list.csv"), good, rejected


def read_records(fs, url, local_dir):
  """Records of one shard on gs://, fetched through gcsfs, parsed with pipeline.features."""
  local = os.path.join(local_dir, url.rsplit("/", 1)[-1])
  fs.get(url, local)
  return [features.parse_single(r) for r in tf.data.TFRecordDataset(local)]


def test_beam_job_reads_and_writes_gs(gcs, tmp_path):
  csv_url, good, rejected = upload_inputs(gcs)
  out = gcs.url("out")
  result = build_tfrecords.run_job(build_tfrecords.JobConfig(
      source="path_list", path_list=csv_url, output_dir=out, num_shards=2,
      validation_fraction=0.25, test_fraction=0.0, max_reject_fraction=0.5))
  assert result.exit_code == 0
  fs = gcs.fs()
  info = json.loads(fs.cat(f"{out}/{features.INFO_FILE}"))
  assert info == result.info and info["class_names"] == list(CLASSES)
  assert info["source"] == f"path_list:{csv_url}"
  listed = {name for s in info["splits"].values() for name in s["shards"]}
  assert listed == {features.shard_name(s, i, 2) for s in ("train", "validation") for i in (0, 1)}
  assert {p.rsplit("/", 1)[-1] for p in fs.ls(out)} == listed | {
      features.INFO_FILE, features.REJECTED_FILE, *tfds_metadata.FILES}
  # TFDS's metadata went to gs:// too (TensorFlow's own gs:// cannot reach the emulator, so
  # tfds cannot load it here; tfds_metadata_test loads the same files locally).
  tfds_info = json.loads(fs.cat(f"{out}/dataset_info.json"))
  assert tfds_info["name"] == features.TFDS_NAME
  assert {s["name"]: sum(map(int, s["shardLengths"])) for s in tfds_info["splits"]} == {
      name: s["num_examples"] for name, s in info["splits"].items()}
  assert fs.cat(f"{out}/label.labels.txt").decode().split() == list(CLASSES)
  keys = []
  for split, s in info["splits"].items():
    records = [r for shard in s["shards"] for r in read_records(fs, f"{out}/{shard}", tmp_path)]
    assert len(records) == s["num_examples"] and s["num_examples"] > 0
    for r in records:
      key = r[features.KEY].numpy().decode()
      keys.append(key)
      assert int(r[features.LABEL]) == CLASSES.index(good[key])
      assert tf.io.decode_jpeg(r[features.IMAGE]).shape == (32, 32, 3)
  assert sorted(keys) == sorted(good)  # every good image exactly once
  text = fs.cat(f"{out}/{features.REJECTED_FILE}").decode()
  lines = text.splitlines()
  assert lines[0] == "source,reason,detail"
  assert {line.split(",")[0]: line.split(",")[1] for line in lines[1:]} == rejected
  assert info["rejected"]["by_reason"] == {"missing_file": 1, "truncated_image": 1}
  assert result.counters["rejected/missing_file"] == 1
  assert result.counters["examples/train"] + result.counters["examples/validation"] == len(good)

  # The whole output, copied down, passes the trainer's check (CRCs, counts, decoding).
  local = tmp_path / "copy"
  fs.get(out + "/", str(local), recursive=True)
  assert verify.check_data_dir(str(local), decode=True).ok


def test_image_dir_and_archive_planning_on_gs(gcs):
  fs = gcs.fs()
  for path, name in testdata.sample_files("test", CLASSES, 2):
    fs.pipe(gcs.url(f"tree/test/{name}/{path.name}"), path.read_bytes())
  for path, name in testdata.sample_files("train", CLASSES, 3):
    fs.pipe(gcs.url(f"tree/train/{name}/{path.name}"), path.read_bytes())
  fs.pipe(gcs.url("tree/README"), b"not an image")
  fs.pipe(gcs.url(f"tree/train/{CLASSES[0]}/deeper/x.jpg"), b"too deep")
  # The planner's gcsfs instance is fsspec's cached one, shared with whatever ran before in this
  # process (another test's reads may have left listings there): start it empty.
  planner_fs = fsspec.core.url_to_fs(gcs.url("tree"))[0]
  planner_fs.invalidate_cache()
  plan = sources.plan_image_dir(gcs.url("tree"))
  assert plan.class_names == list(CLASSES) and plan.has_test
  assert plan.split_sizes == {"train": 6, "test": 4}
  assert sorted((source, reason) for source, reason, _ in plan.rejected) == [
      (gcs.url("tree/README"), "not_in_class_folder"),
      (gcs.url(f"tree/train/{CLASSES[0]}/deeper/x.jpg"), "not_in_class_folder")]
  # Listed folder by folder, each dropped from gcsfs's listings cache once read (fs.find
  # would leave an entry per object there: gigabytes for an ImageNet-sized bucket).
  assert planner_fs is fsspec.core.url_to_fs(gcs.url("tree"))[0]
  assert not planner_fs.dircache
  assert all(e["path"].startswith(f"gs://{BUCKET}/tree/") for e in plan.elements)
  first = next(iter(plan.elements))
  assert sources.read_bytes(first["path"]) == testdata.sample_files(
      first["split"], [CLASSES[0]], 1)[0][0].read_bytes()
  with pytest.raises(sources.SourceError, match="no such directory"):
    sources.plan_image_dir(gcs.url("absent"))
  with pytest.raises(sources.SourceError, match="no such file"):
    sources.plan_path_list(gcs.url("absent.csv"))
  with pytest.raises(sources.SourceError, match="no such file"):
    archives.plan_cifar100(gcs.url("absent.tar.gz"))


def test_trainer_gs_reads_go_through_tensorflow_file_system():
  # TensorFlow's GCS client ignores STORAGE_EMULATOR_HOST and has no route to Google here, so
  # the read fails; what is checked is that the gs:// scheme is TensorFlow's (not "not
  # implemented") and that the failure comes before training, as an error naming the path.
  with pytest.raises(dataset_info.DatasetInfoError, match=f"gs://{BUCKET}/out") as e:
    verify.check_data_dir(f"gs://{BUCKET}/out")
  assert "not implemented" not in str(e.value)
