"""tools/bench_memory.py end to end at tiny scale: real trainer children on the shipped JPEGs,
followed through their run directories. Its claims: the in-memory cache holds the decoded
split once, so resident memory stays flat across epochs once the cache is full; and, against
dataset size, each run's outcome and the trainer's own cache decision: --cache=memory is
refused under a real memory cgroup the data cannot fit in. (That memory's peak grows with the
data and auto's does not is measured at full size, BENCHMARKS.md: trainers at hundreds of
large images cost minutes, too slow for the suite.)"""

import json
import os

import pytest

from tests import testdata
from tools import bench_memory
from tools import cgroups

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
  data_dir = make_data_dir(per_class=10)
  with pytest.raises(SystemExit) as error:
    bench_memory.COMMAND.call([f"--data_dir={data_dir}", "--epochs=1", "--batch_size=1000"])
  message = str(error.value)
  assert message.startswith("tools.bench_memory: error: ") and "\n" not in message
  assert "exited with 1" in message and "larger than the train split" in message


# --- peak memory against dataset size -------------------------------------------------------
CLASSES = tuple(sorted(p.name for p in (testdata.SAMPLE_DIR / "train").iterdir()))  # all 10
# Few steps of small batches; evaluation still reads every validation and test image. The
# shuffle buffer is filled before the first step, so with --cache=memory the whole train
# split has passed into the cache by then.
QUICK = ("--epochs=1", "--steps_per_epoch=1", "--batch_size=4")
# Under it the trainer's budget (half of what is left beside the ~300 MiB it uses when it
# plans) cannot hold the decoded splits of the large set stored at 640 px (470 MiB); the
# refusal comes before training, so the large images cost no training memory.
LIMIT_MIB = 800
TOO_LARGE = {"classes": CLASSES, "per_class": 40, "image_size": 640}


def _against_size(capsys, *args):
  bench_memory.COMMAND.call([*args, *QUICK, "--json"])
  return json.loads(capsys.readouterr().out)["runs"]


@pytest.mark.skipif(cgroups.skip_reason() is not None, reason=str(cgroups.skip_reason()))
def test_under_a_limit_memory_is_refused_with_the_sizes(make_data_dir, capsys):
  large = make_data_dir(**TOO_LARGE)
  [memory] = _against_size(capsys, f"--data_dirs={large}", "--caches=memory",
                           f"--memory_limit_mib={LIMIT_MIB}")
  assert memory["outcome"] == "refused" and memory["returncode"] == 1, memory
  assert "--cache=memory: the decoded train and validation splits need" in memory["message"]
  assert memory["cgroup_peak"] <= LIMIT_MIB * bench_memory.MIB


def test_image_subsets_are_linked_round_robin_over_classes(tmp_path):
  out = bench_memory.link_images(testdata.SAMPLE_DIR / "train", 25, str(tmp_path))
  counts = sorted(len(os.listdir(os.path.join(out, c))) for c in os.listdir(out))
  assert counts == [2] * 5 + [3] * 5
