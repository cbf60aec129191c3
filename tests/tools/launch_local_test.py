"""tools.launch_local with real worker processes on 127.0.0.1: the ways a cluster fails with a
message instead of hanging (a peer lost mid-run, too few shards, a peer that never comes, a
signal to the launcher). Whole 2-worker runs through the launcher, killed and restarted, are
in tests/trainer/distributed_test.py.
"""

import json
import os
import re
import signal
import subprocess
import time

import pytest

from tests import processes
from tests import testdata
from tools import launch_local

REPO = processes.REPO


SHARDED = {"num_shards": 4}  # make_data_dir(**SHARDED): a train shard for each of 2+ workers


def _launch(*args):
  return processes.start("tools.launch_local", *args, merge_stderr=True)


_finish = processes.finish


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
  assert command == ["py", "-m", "trainer.main", "--strategy=multi_worker", "--epochs=1"]
  with pytest.raises(ValueError, match="--strategy=mirrored"):
    launch_local.trainer_command(["--strategy=mirrored"])
  # On the command line: one line, exit status 1, before any worker starts.
  with pytest.raises(SystemExit, match=r"^tools\.launch_local: error: --strategy=mirrored: "):
    launch_local.COMMAND.call(["--workers=2", "--", "--strategy=mirrored"])


def test_a_worker_that_loses_its_peer_mid_run_stops_with_an_error(make_data_dir, tmp_path):
  data_dir = make_data_dir(**SHARDED)
  # Two workers started as the launcher starts them, but with no launcher to stop the
  # survivor: worker 1 is SIGKILLed after epoch 1, and worker 0 must end by itself.
  hosts = [f"127.0.0.1:{p}" for p in launch_local.free_ports(2)]
  flags = [f"--data_dir={data_dir}", f"--model_dir={tmp_path / 'run'}", "--batch_size=16",
           "--steps_per_epoch=2", "--epochs=1000", "--noaugment", "--worker_timeout=60"]
  workers = [launch_local.start_worker(i, hosts, flags, env=processes.command_env(), cwd=REPO)
             for i in range(2)]
  try:
    for line in workers[1].stdout:
      if re.search(r"epoch 1/1000: loss", line):
        break
    workers[1].kill()
    workers[1].wait()
    started = time.monotonic()
    code, log = _finish(workers[0], timeout=90)
  finally:
    for w in workers:
      if w.poll() is None:
        w.kill()
        w.wait()
  assert code == 1, log[-3000:]
  assert "trainer.main: error: lost contact with another worker" in log, log[-3000:]
  assert "rerun the same command on every worker to resume" in log
  assert "Traceback" not in log, log[-3000:]
  # Noticed by the coordination service's heartbeats (about 10 s), well before the
  # 60 s collective timeout.
  assert time.monotonic() - started < 60


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


def test_a_worker_whose_peer_never_comes_fails_after_worker_timeout(make_data_dir, tmp_path):
  data_dir = make_data_dir(**SHARDED)
  # Worker 1 of a 2-worker cluster whose worker 0 is never started.
  hosts = [f"127.0.0.1:{p}" for p in launch_local.free_ports(2)]
  env = dict(processes.command_env(), TF_CONFIG=launch_local.tf_config(hosts, 1))
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


def test_sigterm_to_the_launcher_stops_every_worker(make_data_dir, tmp_path):
  data_dir = make_data_dir(**SHARDED)
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
