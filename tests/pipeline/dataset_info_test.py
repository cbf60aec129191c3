"""tfrecords_info.json: the one writer and the one reader agree, and older files (also under
their old name, dataset_info.json) still load."""

import dataclasses
import json

import pytest

from pipeline import dataset_info
from pipeline import features


def make_info(data_dir):
  return dataset_info.DatasetInfo(
      data_dir=str(data_dir), class_names=("cat", "dog", "ship"),
      splits={"train": dataset_info.split_info(str(data_dir), ["train-00000-of-00001.tfrecord"],
                                               [4, 0, 2]),
              "test": dataset_info.split_info(str(data_dir), ["test-00000-of-00001.tfrecord"],
                                              [1, 1, 1])},
      coarse_class_names=("animal", "vehicle"), image_shape=(32, 32, 3), source="image_dir:x",
      rejected=dataset_info.rejected_summary({"truncated_image": 1, "empty_file": 2}, 9),
      converted={"grayscale": 1}, skipped={"hidden_file": 3}, command="python -m x")


def test_what_is_written_is_what_is_read(tmp_path):
  info = make_info(tmp_path)
  path = dataset_info.write(info)
  assert path == str(tmp_path / features.INFO_FILE)
  assert dataset_info.load(str(tmp_path), check_files=False) == info
  written = json.loads(open(path).read())
  # Every field the module docstring lists, with shard names relative to the directory.
  assert sorted(written) == sorted([
      "format_version", "source", "class_names", "coarse_class_names", "image_shape",
      "splits", "rejected", "converted", "skipped", "command"])
  assert written["splits"]["train"] == {"num_examples": 6, "per_class": [4, 0, 2],
                                        "shards": ["train-00000-of-00001.tfrecord"]}
  assert written["rejected"] == {"total": 3, "by_reason": {"empty_file": 2,
                                                           "truncated_image": 1},
                                 "fraction": 0.25}
  for field in written:
    assert field in dataset_info.__doc__, f"{field} is written but not in the schema"


def test_directories_written_before_the_rename_load_from_dataset_info_json(tmp_path):
  info = make_info(tmp_path)
  path = dataset_info.write(info, name=features.LEGACY_INFO_FILE)
  assert path == str(tmp_path / "dataset_info.json")
  assert dataset_info.load(str(tmp_path), check_files=False) == info
  # Both present (a directory rebuilt in place would not be: the job deletes the old one):
  # the new name wins.
  dataset_info.write(dataclasses.replace(info, source="new"))
  assert dataset_info.load(str(tmp_path), check_files=False).source == "new"


def test_tfds_dataset_info_json_is_not_taken_for_ours(tmp_path):
  """A directory with only TFDS's dataset_info.json (no format_version) has no metadata of
  ours: the error names the file that is missing."""
  (tmp_path / "dataset_info.json").write_text(json.dumps({"name": "images", "splits": []}))
  with pytest.raises(dataset_info.DatasetInfoError,
                     match=f"{tmp_path}/tfrecords_info.json not found"):
    dataset_info.load(str(tmp_path))


def test_older_files_load_and_their_pixel_statistics_are_ignored(tmp_path):
  old = {"format_version": 1, "class_names": ["a", "b"], "image_shape": [32, 32, 3],
         "splits": {"train": {"num_examples": 3, "shards": ["train-00000-of-00001.tfrecord"]}},
         "train_mean": [125.3, 123.0, 113.9], "train_std": [63.0, 62.1, 66.7]}
  info = dataset_info.from_json(str(tmp_path), json.dumps(old))
  assert info.split("train").num_examples == 3 and info.split("train").per_class == ()
  assert info.rejected == {"total": 0, "by_reason": {}, "fraction": 0.0}
  assert "train_mean" not in info.to_json()


def test_image_format_is_written_when_not_the_default_and_read_as_source_when_absent(
    tmp_path):
  info = make_info(tmp_path)
  assert info.image_format == features.SOURCE and "image_format" not in info.to_json()
  assert dataset_info.from_json(str(tmp_path), info.to_json_text()).image_format == "source"
  raw = dataclasses.replace(info, image_format=features.RAW)
  dataset_info.write(raw)
  assert json.load(open(tmp_path / features.INFO_FILE))["image_format"] == "raw"
  assert dataset_info.load(str(tmp_path), check_files=False) == raw
  with pytest.raises(dataset_info.DatasetInfoError, match="image_format 'webp'"):
    dataset_info.from_json(str(tmp_path), json.dumps(dict(raw.to_json(), image_format="webp")))


def test_a_subset_keeps_the_stored_classes_and_is_not_written(tmp_path):
  info = make_info(tmp_path)
  subset = info.subset([2, 0])
  assert subset.class_names == ("ship", "cat") and subset.label_map == (2, 0)
  assert subset.num_classes == 2 and subset.num_stored_classes == 3
  assert info.num_stored_classes == 3
  assert subset.split("train").num_examples == 6 and subset.split("test").per_class == (1, 1)
  with pytest.raises(dataset_info.DatasetInfoError, match="class subset"):
    subset.to_json()


def test_shards_outside_the_directory_are_refused(tmp_path):
  info = make_info(tmp_path / "a")
  moved = dataset_info.DatasetInfo(
      data_dir=str(tmp_path / "b"), class_names=info.class_names, splits=info.splits)
  with pytest.raises(dataset_info.DatasetInfoError, match="is not in"):
    moved.to_json()
