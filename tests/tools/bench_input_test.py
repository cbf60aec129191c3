"""tools/bench_input.py end to end at tiny scale on the shipped CIFAR-10 JPEGs: every method
(the optional ones too) feeds batches at a measured rate, each repeat timed."""

import json

import pytest

from tests import testdata
from tools import bench_input
from tools import cli


def test_every_method_is_timed_in_every_repeat(capsys):
  bench_input.COMMAND.call(["--image_dir", str(testdata.SAMPLE_DIR / "train"),
                            "--num_images", "40", "--batches", "2", "--repeats", "2",
                            "--op_resampler", "--deterministic", "--json"])
  result = json.loads(capsys.readouterr().out)
  assert sorted(result["images_per_s"]) == sorted(bench_input.METHODS)
  timed = (*bench_input.METHODS, *bench_input.OP_METHODS, bench_input.DETERMINISTIC_METHOD)
  assert sorted(result["runs"]) == sorted(timed)
  assert all(len(v) == 2 and min(v) > 0 for v in result["runs"].values())
  assert result["settings"]["image_shape"] == [32, 32, 3]
  assert sorted(result["op_resampler"]) == ["project_device", "project_host"]
  assert result["deterministic"]["project_host"] > 0


def test_images_are_taken_round_robin_over_classes():
  files, class_names = bench_input.list_images(testdata.SAMPLE_DIR / "train", 20)
  assert len(class_names) == 10
  assert [label for _, label in files] == list(range(10)) * 2


def test_a_missing_image_dir_names_the_flag(tmp_path):
  with pytest.raises(cli.ToolError, match="--image_dir"):
    bench_input.list_images(tmp_path / "nowhere", 10)
  with pytest.raises(SystemExit, match=r"^tools\.bench_input: error: --image_dir="):
    bench_input.COMMAND.call([f"--image_dir={tmp_path / 'nowhere'}"])


def test_written_data_has_per_class_counts_so_a_class_subset_works(tmp_path):
  files, class_names = bench_input.list_images(testdata.SAMPLE_DIR / "train", 25)
  info = bench_input.write_tfrecords(files, class_names, str(tmp_path), (32, 32, 3), 2)
  assert info.split("train").per_class == (3,) * 5 + (2,) * 5  # round-robin: 25 of 10
  assert info.subset([0, 9]).split("train").num_examples == 5
