"""tools/bench_input.py end to end at tiny scale on the shipped CIFAR-10 JPEGs."""

import json

import pytest

from tests import testdata
from tools import bench_input


def test_json_output_has_every_method_with_positive_rates(capsys):
  bench_input.main(["--image_dir", str(testdata.SAMPLE_DIR / "train"), "--num_images", "40",
                    "--batches", "2", "--repeats", "2", "--op_resampler", "--deterministic",
                    "--json"])
  result = json.loads(capsys.readouterr().out)
  rates = result["images_per_s"]
  assert sorted(rates) == sorted(bench_input.METHODS)
  assert all(isinstance(v, float) and v > 0 for v in rates.values())
  assert all(len(result["runs"][name]) == 2 for name in bench_input.METHODS)
  assert result["settings"]["image_shape"] == [32, 32, 3]
  assert result["ratios"]["project_host_vs_image_data_generator"] == (
      rates["project_host"] / rates["image_data_generator"])
  assert sorted(result["op_resampler"]) == ["project_device", "project_host"]
  assert all(v > 0 for v in result["op_resampler"].values())
  assert result["ratios"]["project_host_deterministic_vs_project_host"] == (
      result["deterministic"]["project_host"] / rates["project_host"])
  table = bench_input.format_table(result)
  assert "project_host_op" in table and "project_host_deterministic_vs_project_host" in table


def test_images_are_taken_round_robin_over_classes():
  files, class_names = bench_input.list_images(testdata.SAMPLE_DIR / "train", 20)
  assert len(class_names) == 10
  assert [label for _, label in files] == list(range(10)) * 2


def test_a_missing_image_dir_names_the_flag(tmp_path):
  with pytest.raises(SystemExit, match="--image_dir"):
    bench_input.list_images(tmp_path / "nowhere", 10)


def test_written_data_has_per_class_counts_so_a_class_subset_works(tmp_path):
  files, class_names = bench_input.list_images(testdata.SAMPLE_DIR / "train", 25)
  info = bench_input.write_tfrecords(files, class_names, str(tmp_path), (32, 32, 3), 2)
  assert info.split("train").per_class == (3,) * 5 + (2,) * 5  # round-robin: 25 of 10
  assert info.subset([0, 9]).split("train").num_examples == 5
