"""tools/bench_memory.py end to end at tiny scale: a real trainer child on the shipped JPEGs."""

import json

from tests import testdata
from tools import bench_memory


def test_json_output_has_rss_at_build_every_epoch_and_end(tmp_path, capsys):
  testdata.write_data_dir(tmp_path / "data", per_class=10)  # 24 train examples
  bench_memory.main(["--data_dir", str(tmp_path / "data"), "--epochs", "3", "--json",
                     "--batch_size=8"])  # an unknown flag goes to trainer.main
  result = json.loads(capsys.readouterr().out)
  assert [p["at"] for p in result["points"]] == ["built", "epoch 1", "epoch 2", "epoch 3",
                                                 "end"]
  assert all(p["rss"] > 0 and p["hwm"] >= p["rss"] for p in result["points"])
  assert result["peak"] >= max(p["hwm"] for p in result["points"])
  assert result["decoded"]["train"] == 24 * 32 * 32 * 3
  assert "epoch3_minus_epoch2" in result and "peak_above_built" in result
  assert "peak RSS" in bench_memory.format_table(result)
