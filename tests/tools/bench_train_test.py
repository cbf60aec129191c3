"""tools/bench_train.py end to end at tiny scale on the shipped CIFAR-10 JPEGs. Its claim:
the two sides time the same training (the same steps of the trainer's own step), one fed by
the real pipeline, one from memory."""

import json

from tools import bench_train


def test_both_sides_train_the_same_steps_in_every_repeat(make_data_dir, capsys):
  data_dir = make_data_dir(per_class=20)  # 48 train examples
  bench_train.COMMAND.call(["--data_dir", data_dir, "--steps", "3", "--repeats", "2",
                            "--batch_size", "8", "--memory_batches", "2", "--json"])
  result = json.loads(capsys.readouterr().out)
  # Every timing ran 3 optimizer steps, on both sides.
  assert result["trained_steps"] == {"pipeline": [3, 3], "memory": [3, 3]}
  assert all(len(v) == 2 and min(v) > 0 for v in result["runs"].values())
  assert result["settings"]["train_examples"] == 48
  assert "pipeline / memory" in bench_train.format_table(result)
