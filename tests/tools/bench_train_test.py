"""tools/bench_train.py end to end at tiny scale on the shipped CIFAR-10 JPEGs."""

import json

from tests import testdata
from tools import bench_train


def test_json_output_has_both_sides_and_their_ratio(tmp_path, capsys):
  testdata.write_data_dir(tmp_path / "data", per_class=20)  # 48 train examples
  bench_train.main(["--data_dir", str(tmp_path / "data"), "--steps", "3", "--repeats", "2",
                    "--batch_size", "8", "--memory_batches", "2", "--json"])
  result = json.loads(capsys.readouterr().out)
  rates = result["steps_per_s"]
  assert sorted(rates) == sorted(bench_train.SIDES)
  assert all(isinstance(v, float) and v > 0 for v in rates.values())
  assert all(len(result["runs"][side]) == 2 for side in bench_train.SIDES)
  assert result["ratio"] == rates["pipeline"] / rates["memory"]
  assert len(result["paired_ratios"]) == 2
  assert result["within_target"] == (rates["pipeline"] >= bench_train.TARGET * rates["memory"])
  assert result["images_per_s"]["memory"] == rates["memory"] * 8
  assert result["settings"]["train_examples"] == 48
  assert "pipeline / memory" in bench_train.format_table(result)
