"""The Beam job's output is a TensorFlow Datasets data directory: tfds.builder_from_directory
loads every record with its image and label, the same examples as the project's reader, and
the metadata is what tfds.folder_dataset.write_metadata itself writes for those shards."""

import json
import os
import shutil

import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from pipeline import build_tfrecords
from pipeline import dataset_info
from pipeline import features
from pipeline import tfds_metadata
from tests import testdata

CLASSES = ("cat", "ship")


@pytest.fixture(scope="module")
def job_output(tmp_path_factory):
  """The job's output for two classes of the shipped sample (80 train, 20 test JPEGs)."""
  out = str(tmp_path_factory.mktemp("tfds") / "out")
  result = build_tfrecords.run_job(build_tfrecords.JobConfig(
      source="image_dir", image_dir=str(testdata.SAMPLE_DIR), output_dir=out,
      classes=CLASSES, num_shards=2, validation_fraction=0.2, command="tfds_metadata_test"))
  assert result.exit_code == 0
  return out


def project_examples(info, split):
  """{key: (label, pixels, format, height, width)} of a split, read as the trainer's side
  reads it (dataset_info + features), pixels decoded from the stored bytes."""
  out = {}
  for r in tf.data.TFRecordDataset(list(info.split(split).shards)):
    e = features.parse_single(r)
    out[e[features.KEY].numpy().decode()] = (
        int(e[features.LABEL]), tf.io.decode_image(e[features.IMAGE], channels=3).numpy(),
        e[features.FORMAT].numpy().decode(), int(e[features.HEIGHT]), int(e[features.WIDTH]))
  return out


def test_tfds_loads_every_record_with_image_and_label_as_our_reader_does(job_output):
  info = dataset_info.load(job_output)
  builder = tfds.builder_from_directory(job_output)
  assert builder.info.name == features.TFDS_NAME
  assert builder.info.features["label"].names == list(CLASSES)
  assert set(builder.info.splits) == set(info.splits) == {"train", "validation", "test"}
  for split in info.splits:
    ours = project_examples(info, split)
    assert len(ours) == info.split(split).num_examples > 0
    assert builder.info.splits[split].num_examples == len(ours)
    theirs = {}
    for e in tfds.as_numpy(builder.as_dataset(split=split)):
      image = e["image"]
      theirs[e["key"].decode()] = (int(e["label"]), image["encoded"],
                                   image["format"].decode(), int(image["height"]),
                                   int(image["width"]))
      assert int(e["coarse_label"]) == features.NO_COARSE_LABEL
    assert sorted(theirs) == sorted(ours)
    for key, (label, pixels, fmt, height, width) in ours.items():
      t_label, t_pixels, t_fmt, t_height, t_width = theirs[key]
      assert (t_label, t_fmt, t_height, t_width) == (label, fmt, height, width)
      assert t_pixels.shape == (32, 32, 3) and (t_pixels == pixels).all()


def test_metadata_is_what_tfds_write_metadata_writes(job_output, tmp_path):
  """tfds writes its own metadata for a copy of the shards, counting their records and bytes
  itself (split_infos=None) and reading one back (check_data): the files are ours."""
  copy = tmp_path / "copy"
  copy.mkdir()
  for name in os.listdir(job_output):
    if ".tfrecord-" in name:
      shutil.copy(os.path.join(job_output, name), copy / name)
  ours = {n: open(os.path.join(job_output, n), "rb").read() for n in tfds_metadata.FILES}
  description = json.loads(ours["dataset_info.json"])["description"]
  assert "tfds_metadata_test" in description
  tfds.folder_dataset.write_metadata(
      data_dir=str(copy), features=tfds_metadata.feature_connector(CLASSES, (32, 32, 3)),
      version=tfds_metadata.VERSION, description=description)

  def by_split(text):
    data = json.loads(text)
    data["splits"] = sorted(data["splits"], key=lambda s: s["name"])
    return data

  theirs = {n: (copy / n).read_bytes() for n in tfds_metadata.FILES}
  assert by_split(ours["dataset_info.json"]) == by_split(theirs["dataset_info.json"])
  assert json.loads(ours["features.json"]) == json.loads(theirs["features.json"])
  assert ours["label.labels.txt"].split() == theirs["label.labels.txt"].split()


def test_a_full_disk_leaves_no_part_of_tfds_metadata(small_disk):
  """Each file is written under a temporary name and renamed, so a disk that fills while
  writing leaves the previous file whole (here: none) and no temporary file."""
  (small_disk / "filler").write_bytes(b"\0" * (1024 * 1024 - 8192))
  with pytest.raises(OSError) as error:
    tfds_metadata.write(str(small_disk), [f"class_{i}" for i in range(2000)], None,
                        {"train": ([10, 10], 1000)}, beam=True)
  assert str(small_disk) in str(error.value)
  left = sorted(os.listdir(small_disk))
  assert not any(n.startswith(".temp-") for n in left), left
  assert all(os.path.getsize(small_disk / n) > 0 for n in left), left
  assert "label.labels.txt" not in left
