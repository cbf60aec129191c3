"""tools/bench_memory.py end to end at tiny scale: a real trainer child on the shipped JPEGs,
followed through its run directory. Its claim: the in-memory cache holds the decoded split
once, so resident memory stays flat across epochs once the cache is full."""

import json

from tools import bench_memory

FLAT_BOUND = 32 * bench_memory.MIB  # a tiny run's RSS may wobble by allocator noise, no more


def test_rss_is_sampled_at_every_stage_and_stays_flat_across_epochs(make_data_dir, capsys):
  data_dir = make_data_dir(per_class=10)  # 24 train examples
  bench_memory.COMMAND.call(["--data_dir", data_dir, "--epochs", "3", "--json",
                             "--batch_size=8"])  # a flag not its own goes to trainer.main
  result = json.loads(capsys.readouterr().out)
  assert [p["at"] for p in result["points"]] == ["built", "epoch 1", "epoch 2", "epoch 3",
                                                 "end"]
  assert "--batch_size=8" in result["settings"]["command"]
  assert all(p["rss"] > 0 and p["hwm"] >= p["rss"] for p in result["points"])
  assert result["peak"] >= max(p["hwm"] for p in result["points"])
  assert abs(result["epoch3_minus_epoch2"]) < FLAT_BOUND, result["points"]


def test_a_failing_trainer_is_a_one_line_error_with_its_last_line(make_data_dir):
  import pytest
  data_dir = make_data_dir(per_class=10)
  with pytest.raises(SystemExit) as error:
    bench_memory.COMMAND.call([f"--data_dir={data_dir}", "--epochs=1", "--batch_size=1000"])
  message = str(error.value)
  assert message.startswith("tools.bench_memory: error: ") and "\n" not in message
  assert "exited with 1" in message and "larger than the train split" in message
