"""Preemption: a run killed with SIGKILL mid-epoch and started again, on one process and on
two worker processes on 127.0.0.1 (through tools.launch_local), ends as an uninterrupted run.

The runs use --learning_rate=0, so that the weights, and so the validation loss, stay those
of epoch 1: an uninterrupted run with --patience=3 therefore stops after epoch 4 with best
epoch 1. A restart that lost the early-stopping state (epochs without improvement) would run
past epoch 4; one that started from scratch would train epochs 1-2 again. (That training
itself resumes, optimizer included, is checked with a real learning rate in loop_test.py.)
The worker to kill is the chief, worker 0: the one whose files the restart resumes from.
The restarted 2-worker run is also the check of a whole 2-worker run: disjoint train shards,
identical final weights, prefixed logs, and only the chief's files in --model_dir.
"""

import json
import os
import re
import signal
import socket

import pytest

from tests import processes
from tests import testdata

PATIENCE = 3
UNINTERRUPTED_EPOCHS = 1 + PATIENCE  # best epoch 1, then PATIENCE epochs without improvement


@pytest.fixture(scope="module")
def data_dir(make_data_dir):
  return make_data_dir(num_shards=4)  # 2 train shards per worker


class Job(processes.Lines):
  """A training job in subprocesses: the trainer itself (workers=1) or tools.launch_local."""

  def __init__(self, workers, flags):
    if workers == 1:
      process = processes.start_trainer("--strategy=one_device", *flags, merge_stderr=True)
    else:
      process = processes.start("tools.launch_local", f"--workers={workers}",
                                "--grace_seconds=5", "--", *flags, merge_stderr=True)
    super().__init__(process)
    self.workers = workers

  def pid(self, worker):
    if self.workers == 1:
      return self.process.pid
    return int(self.wait_for(rf"^\[launch\] worker {worker} pid \d+", 30).split()[-1])


def _history(model_dir):
  with open(os.path.join(model_dir, "history.csv")) as f:
    return f.read().splitlines()[1:]


@pytest.mark.parametrize("workers", [1, 2], ids=["one_process", "two_workers"])
def test_a_run_killed_mid_epoch_resumes_and_ends_as_an_uninterrupted_run(data_dir, tmp_path,
                                                                        workers):
  model_dir = str(tmp_path / "run")
  flags = [f"--data_dir={data_dir}", f"--model_dir={model_dir}", "--batch_size=16",
           "--steps_per_epoch=2", "--learning_rate=0", f"--patience={PATIENCE}",
           "--epochs=50", "--noaugment", "--seed=5"]
  prefix = r"^\[worker 0\] .*" if workers > 1 else ""
  first = Job(workers, flags)
  victim = first.pid(0)
  # Worker 0 logs "epoch 2/50" after writing epoch 2's checkpoint, and starts training
  # epoch 3 right after: a SIGKILL now lands in the middle of epoch 3.
  first.wait_for(prefix + r"epoch 2/50: loss", timeout=240)
  os.kill(victim, signal.SIGKILL)
  code, log = first.finish(timeout=60)
  done = testdata.latest_checkpoint_epoch(model_dir)
  assert 2 <= done < UNINTERRUPTED_EPOCHS, log[-3000:]
  assert not os.path.exists(os.path.join(model_dir, "results.json"))
  if workers == 1:
    assert code == -signal.SIGKILL
  else:
    # The launcher saw worker 0 die, stopped worker 1 (which cannot train alone) and failed.
    assert code == 1, log[-3000:]
    assert "[launch] worker 0 was killed by SIGKILL; stopping the other workers" in log
    other = int(re.search(r"\[launch\] worker 1 pid (\d+)", log).group(1))
    with pytest.raises(ProcessLookupError):
      os.kill(other, 0)
  history_before = _history(model_dir)[:done]
  print(f"killed pid {victim} (worker 0 of {workers}) in epoch {done + 1}; restarting from "
        f"the checkpoint of epoch {done}")  # shown with pytest -s

  second = Job(workers, flags)  # the same command again
  code, log = second.finish(timeout=240)
  assert code == 0, log[-4000:]
  # Every worker restored the checkpoint the killed run left, and none started over.
  assert log.count(f"{done} epochs done") == workers, log[-4000:]
  with open(os.path.join(model_dir, "results.json")) as f:
    results = json.load(f)
  assert results["resumed_from_epoch"] == done
  # What an uninterrupted run ends with: the early-stopping count carried over the restart.
  assert (results["epochs_run"], results["best_epoch"], results["stopped_early"]) == (
      UNINTERRUPTED_EPOCHS, 1, True)
  history = _history(model_dir)
  assert [row.split(",")[0] for row in history] == [
      str(e) for e in range(1, UNINTERRUPTED_EPOCHS + 1)]
  assert history[:done] == history_before  # epochs before the kill were not run again
  assert len({row.split(",")[3] for row in history}) == 1  # val_loss never moved (lr 0)
  if workers > 1:
    # Both workers stopped early together (the validation loss is all-reduced), so neither
    # waited for the other, and they hold the same weights.
    assert len(re.findall(r"test_loss .*, stopped early", log)) == 2, log[-4000:]
    digests = re.findall(r"^\[worker (\d)\] .*final weights sha256 ([0-9a-f]{64})$", log,
                         re.M)
    assert sorted(w for w, _ in digests) == ["0", "1"] and len({d for _, d in digests}) == 1
    # Every line carries its worker's prefix (or the launcher's).
    assert all(line.startswith(("[worker 0] ", "[worker 1] ", "[launch] "))
               for line in log.splitlines())
    # Each worker read its own half of the train shards, and together all of them.
    shards = {}
    for worker, files in re.findall(r"^\[worker (\d)\] .*input pipeline \d of 2 reads "
                                    r"train shards \[(.*)\]$", log, re.M):
      shards[worker] = set(re.findall(r"train\.tfrecord-\d+-of-00004", files))
    assert shards["0"] and shards["1"] and not shards["0"] & shards["1"]
    assert len(shards["0"] | shards["1"]) == 4
    # Only the chief wrote into model_dir; worker 1's scratch directory is gone.
    assert sorted(os.listdir(model_dir)) == [
        "best", "checkpoints", "confusion_matrix.csv", "flags.txt", "history.csv", "model.keras",
        "results.json", "saved_model", "tensorboard"]
    assert (results["strategy"], results["num_replicas"]) == ("multi_worker", 2)


def test_a_malformed_tf_config_stops_the_worker_with_the_problem(data_dir, tmp_path):
  # Every kind of malformed TF_CONFIG is checked in strategy_test.py; this is the real
  # process: a message and exit 1 before any server starts, not a wait for a cluster.
  tf_config = ('{"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, '
               '"task": {"type": "worker", "index": 2}}')
  problem = "TF_CONFIG task index 2 is out of range: job 'worker' has 2 hosts"
  process = processes.run_trainer("--strategy=multi_worker", f"--data_dir={data_dir}",
                                  f"--model_dir={tmp_path / 'run'}",
                                  env={"TF_CONFIG": tf_config}, timeout=120)
  assert process.returncode == 1
  assert problem in process.stderr, process.stderr[-2000:]
  assert "Traceback" not in process.stderr


def test_a_worker_whose_port_is_taken_says_so(data_dir, tmp_path):
  with socket.socket() as taken:
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    host = f"127.0.0.1:{taken.getsockname()[1]}"
    tf_config = json.dumps({"cluster": {"worker": [host, "127.0.0.1:1"]},
                            "task": {"type": "worker", "index": 0}})
    process = processes.run_trainer("--strategy=multi_worker", f"--data_dir={data_dir}",
                                    f"--model_dir={tmp_path / 'run'}", "--worker_timeout=60",
                                    env={"TF_CONFIG": tf_config}, timeout=120)
  assert process.returncode == 1
  assert f"worker 0 could not start its server at {host}" in process.stderr, (
      process.stderr[-2000:])
  assert "Traceback" not in process.stderr
