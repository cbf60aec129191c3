"""tools.launch_local with real worker processes on 127.0.0.1: a 2-worker run, and the ways a
cluster fails with a message instead of hanging (too few shards, a peer that never comes,
a signal to the launcher). Preemption (killing a worker and restarting) is in
tests/trainer/distributed_test.py.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests import testdata
from tools import launch_local

REPO = str(testdata.REPO)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("data")
  testdata.write_data_dir(path, num_shards=4)
  return str(path)


def _env():
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
  env.pop("TF_CONFIG", None)
  return env


def _launch(*args):
  return subprocess.Popen([sys.executable, "-m", "tools.launch_local", *args], cwd=REPO,
                          env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def _finish(process, timeout):
  try:
    out, _ = process.communicate(timeout=timeout)
  finally:
    if process.poll() is None:
      process.kill()
      process.communicate()
  return process.returncode, out


def _gone(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return True
  return False


def test_tf_configs_name_distinct_free_ports_and_each_worker_once():
  ports = launch_local.free_ports(3)
  assert len(set(ports)) == 3
  hosts = [f"127.0.0.1:{p}" for p in ports]
  configs = [json.loads(launch_local.tf_config(hosts, i)) for i in range(3)]
  assert all(c["cluster"] == {"worker": hosts} for c in configs)
  assert [c["task"] for c in configs] == [{"type": "worker", "index": i} for i in range(3)]
  command = launch_local.trainer_command(["--epochs=1"], python="py")
  assert command == ["py", "-m", "trainer.train", "--strategy=multi_worker", "--epochs=1"]
  with pytest.raises(ValueError, match="--strategy=mirrored"):
    launch_local.trainer_command(["--strategy=mirrored"])


def test_two_workers_read_disjoint_shards_and_end_with_identical_weights(data_dir, tmp_path):
  model_dir = tmp_path / "run"
  code, log = _finish(_launch("--workers=2", "--", f"--data_dir={data_dir}",
                              f"--model_dir={model_dir}", "--batch_size=16", "--epochs=2",
                              "--steps_per_epoch=2", "--noaugment"), timeout=240)
  assert code == 0, log[-4000:]
  assert "[launch] exit codes [0, 0]" in log
  # Every line of a worker carries its prefix; the launcher says which pid is which.
  assert re.search(r"^\[launch\] worker 0 pid \d+$", log, re.M)
  assert re.search(r"^\[launch\] worker 1 pid \d+$", log, re.M)
  assert all(line.startswith(("[worker 0] ", "[worker 1] ", "[launch] "))
             for line in log.splitlines())
  # Each worker read its own half of the train shards, and together all of them.
  shards = {}
  for worker, files in re.findall(r"^\[worker (\d)\] .*input pipeline \d of 2 reads train "
                                  r"shards \[(.*)\]$", log, re.M):
    shards[worker] = set(re.findall(r"train-\d+-of-00004", files))
  assert shards["0"] and shards["1"] and not shards["0"] & shards["1"]
  assert len(shards["0"] | shards["1"]) == 4
  # The same weights at the end (different data, all-reduced gradients).
  digests = re.findall(r"^\[worker (\d)\] .*final weights sha256 ([0-9a-f]{64})$", log, re.M)
  assert sorted(w for w, _ in digests) == ["0", "1"] and len({d for _, d in digests}) == 1
  # Only the chief wrote into model_dir; worker 1's scratch directory is gone.
  assert sorted(os.listdir(model_dir)) == [
      "best", "checkpoints", "flags.txt", "history.csv", "model.keras", "results.json",
      "saved_model", "tensorboard"]
  results = json.loads((model_dir / "results.json").read_text())
  assert (results["strategy"], results["num_replicas"], results["epochs_run"]) == (
      "multi_worker", 2, 2)


def test_fewer_shards_than_workers_fail_on_every_worker_with_the_fix(tmp_path):
  data_dir = tmp_path / "data"
  testdata.write_data_dir(data_dir, per_class=10, num_shards=1)
  started = time.monotonic()
  code, log = _finish(_launch("--workers=2", "--", f"--data_dir={data_dir}",
                              f"--model_dir={tmp_path / 'run'}", "--batch_size=4"), timeout=120)
  assert code == 1
  message = "has 1 train shard file(s) for 2 workers"
  assert message in log and "--num_shards=2 or more" in log, log[-3000:]
  assert "Traceback" not in log, log[-3000:]
  assert not os.path.exists(tmp_path / "run" / "checkpoints")
  assert time.monotonic() - started < 120


def test_a_worker_whose_peer_never_comes_fails_after_worker_timeout(data_dir, tmp_path):
  # Worker 1 of a 2-worker cluster whose worker 0 is never started.
  hosts = [f"127.0.0.1:{p}" for p in launch_local.free_ports(2)]
  env = dict(_env(), TF_CONFIG=launch_local.tf_config(hosts, 1))
  started = time.monotonic()
  process = subprocess.Popen(
      launch_local.trainer_command([f"--data_dir={data_dir}", f"--model_dir={tmp_path / 'r'}",
                                    "--worker_timeout=5"]),
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  code, log = _finish(process, timeout=120)
  assert code == -signal.SIGKILL, log[-3000:]  # the watchdog ended it
  assert (f"worker 1 could not reach the other workers of TF_CONFIG's cluster {hosts} within "
          "--worker_timeout=5 s") in log, log[-3000:]
  assert time.monotonic() - started < 120


def test_sigterm_to_the_launcher_stops_every_worker(data_dir, tmp_path):
  launcher = _launch("--workers=2", "--grace_seconds=3", "--", f"--data_dir={data_dir}",
                     f"--model_dir={tmp_path / 'run'}", "--batch_size=16", "--epochs=1000")
  pids = []
  for line in launcher.stdout:
    match = re.match(r"\[launch\] worker \d pid (\d+)", line)
    if match:
      pids.append(int(match.group(1)))
    if re.match(r"\[worker 1\] .*reads train shards", line):
      break  # connected and about to train: TensorFlow now handles SIGTERM itself
  assert len(pids) == 2
  launcher.send_signal(signal.SIGTERM)
  code, log = _finish(launcher, timeout=60)
  assert code == 1, log[-3000:]
  assert "[launch] SIGTERM: forwarded to every worker" in log
  assert all(_gone(pid) for pid in pids)
