"""Strategy selection, TF_CONFIG checks, and real distributed runs in subprocesses.

Logical CPU devices must be configured before TensorFlow initializes, and a multi-worker
cluster needs one process per worker, so those runs go through `python -m trainer.main`
in fresh processes.
"""

import json
import os
import socket
import subprocess

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import processes
from trainer import strategy as strategy_lib
GOOD_TF_CONFIG = {"cluster": {"worker": ["localhost:1", "localhost:2"]},
                  "task": {"type": "worker", "index": 1}}


def _train(data_dir, model_dir, *flags, env=None):
  """Starts `python -m trainer.main` on the test data (a Popen)."""
  return processes.start_trainer(f"--data_dir={data_dir}", f"--model_dir={model_dir}",
                                 "--noaugment", "--seed=3", *flags, env=env)


def _finish(process, timeout=180):
  try:
    _, stderr = process.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    # A worker whose peer died waits in a collective forever: do not leave it behind.
    process.kill()
    _, stderr = process.communicate()
    raise AssertionError(f"no exit within {timeout} s: {stderr[-3000:]}") from None
  assert process.returncode == 0, stderr[-3000:]
  return stderr


def _read(model_dir, name):
  with open(os.path.join(model_dir, name)) as f:
    return f.read()


@pytest.mark.parametrize("text, problem", [
    ("", "not set"),
    ("{cluster", "not valid JSON"),
    ('["worker"]', "must be a JSON object"),
    ('{"task": {"type": "worker", "index": 0}}', "no 'cluster'"),
    ('{"cluster": {"worker": "localhost:1"}, "task": {"type": "worker", "index": 0}}',
     "non-empty list"),
    ('{"cluster": {"ps": ["localhost:1"]}, "task": {"type": "ps", "index": 0}}',
     "needs a 'worker'"),
    ('{"cluster": {"worker": ["localhost:1"]}}', "no 'task'"),
    ('{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "chief", "index": 0}}',
     "'chief' is not a job"),
    ('{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 1}}',
     "index 1 is out of range"),
])
def test_bad_tf_config_names_the_problem(text, problem):
  with pytest.raises(strategy_lib.StrategyError, match=problem):
    strategy_lib.parse_tf_config(text)


def test_good_tf_config_is_returned():
  assert strategy_lib.parse_tf_config(json.dumps(GOOD_TF_CONFIG)) == GOOD_TF_CONFIG


def test_multi_worker_without_tf_config_fails_before_building(monkeypatch):
  monkeypatch.delenv("TF_CONFIG", raising=False)
  with pytest.raises(strategy_lib.StrategyError, match="needs the TF_CONFIG"):
    strategy_lib.make_strategy("multi_worker")
  with pytest.raises(strategy_lib.StrategyError, match="--cpu_replicas=2 does not apply"):
    strategy_lib.make_strategy("multi_worker", cpu_replicas=2)


def test_unknown_strategy_and_bad_replica_count():
  with pytest.raises(strategy_lib.StrategyError, match="--strategy=ring: unknown"):
    strategy_lib.make_strategy("ring")
  with pytest.raises(strategy_lib.StrategyError, match="--cpu_replicas=0"):
    strategy_lib.make_strategy("mirrored", cpu_replicas=0)


def test_single_process_strategies_are_chief():
  for name in ("auto", "one_device"):
    strategy = strategy_lib.make_strategy(name)
    assert isinstance(strategy, tf.distribute.OneDeviceStrategy)  # no GPU here
    assert strategy_lib.is_chief(strategy) and strategy_lib.worker_index(strategy) == 0
    assert strategy_lib.name_of(strategy) == "one_device"


def test_mirrored_on_two_logical_cpus_matches_one_device(data_dir, tmp_path):
  # One step on the whole train split (96 examples = one global batch, augmentation off):
  # the first-step loss is the mean over the same 96 examples whichever replica saw which,
  # and after one update with the replicas' summed gradients both runs must hold the same
  # weights. Plain SGD, because Adam's first step ignores the gradient's scale and would
  # hide a gradient wrongly averaged (or summed twice) across replicas. --deterministic:
  # otherwise the mirrored run's second half-batch may be the next epoch's first (parallel
  # batching hands out whichever batch is ready), and the two runs see different examples.
  flags = ("--batch_size=96", "--epochs=1", "--steps_per_epoch=1", "--optimizer=sgd",
           "--learning_rate=0.1", "--deterministic")
  one = _train(data_dir, tmp_path / "one", "--strategy=one_device", *flags)
  two = _train(data_dir, tmp_path / "two", "--strategy=mirrored", "--cpu_replicas=2", *flags)
  _finish(one)
  _finish(two)
  results = [json.loads(_read(tmp_path / d, "results.json")) for d in ("one", "two")]
  assert [r["num_replicas"] for r in results] == [1, 2]
  assert [r["strategy"] for r in results] == ["one_device", "mirrored"]
  rows = [_read(tmp_path / d, "history.csv").splitlines()[1].split(",") for d in ("one", "two")]
  assert float(rows[1][1]) == pytest.approx(float(rows[0][1]), rel=1e-5)  # first-step loss
  assert float(rows[1][3]) == pytest.approx(float(rows[0][3]), rel=1e-5)  # val loss after it
  weights = [keras.models.load_model(tmp_path / d / "model.keras").get_weights()
             for d in ("one", "two")]
  for w_one, w_two in zip(*weights):
    np.testing.assert_allclose(w_two, w_one, rtol=1e-4, atol=1e-6)


def test_deterministic_runs_are_bit_identical(data_dir, tmp_path):
  # Two replicas, host augmentation, two epochs: the same seed gives the same numbers.
  flags = ("--strategy=mirrored", "--cpu_replicas=2", "--batch_size=16", "--epochs=2",
           "--augment", "--seed=5", "--deterministic")
  runs = [_train(data_dir, tmp_path / d, *flags) for d in ("a", "b")]
  for run in runs:
    _finish(run)
  histories = [[line.split(",")[:-1] for line in _read(tmp_path / d, "history.csv").splitlines()]
               for d in ("a", "b")]  # the last column is the epoch's time
  assert len(histories[0]) == 3 and histories[0] == histories[1]
  weights = [keras.models.load_model(tmp_path / d / "model.keras").get_weights()
             for d in ("a", "b")]
  for w_a, w_b in zip(*weights):
    np.testing.assert_array_equal(w_a, w_b)


def _free_ports(n):
  sockets = [socket.socket() for _ in range(n)]
  for s in sockets:
    s.bind(("localhost", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def test_two_workers_train_together_and_only_the_chief_writes(data_dir, tmp_path):
  hosts = [f"localhost:{p}" for p in _free_ports(2)]
  model_dir = tmp_path / "run"
  workers = []
  for index in range(2):
    tf_config = {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}
    workers.append(_train(data_dir, model_dir, "--strategy=multi_worker", "--batch_size=16",
                          "--epochs=2", "--steps_per_epoch=2",
                          env={"TF_CONFIG": json.dumps(tf_config)}))
  try:
    logs = [_finish(w) for w in workers]
  finally:
    for w in workers:
      if w.poll() is None:
        w.kill()
        w.communicate()
  results = json.loads(_read(model_dir, "results.json"))
  assert results["num_replicas"] == 2 and results["strategy"] == "multi_worker"
  assert results["epochs_run"] == 2 and results["test_examples"] == 30
  # Both workers computed the same (all-reduced) numbers; only worker 0 wrote files, and
  # worker 1's scratch directory is gone.
  finals = [l[l.rindex("test_loss"):].splitlines()[0] for l in logs]
  assert finals[0] == finals[1]
  assert f"this process writes into {model_dir}\n" in logs[0]
  assert f"this process writes into {model_dir}/.worker1\n" in logs[1]
  assert sorted(os.listdir(model_dir)) == [
      "best", "checkpoints", "confusion_matrix.csv", "flags.txt", "history.csv", "model.keras",
      "results.json", "saved_model", "tensorboard"]


def test_workers_on_one_host_are_counted_to_share_its_memory():
  cluster = {"chief": ["10.0.0.1:2222"], "worker": ["10.0.0.1:2223", "10.0.0.2:2222",
                                                     "localhost:1", "127.0.0.1:2"]}
  assert strategy_lib.workers_on_host(cluster, "worker", 0) == 2  # the chief and itself
  assert strategy_lib.workers_on_host(cluster, "worker", 1) == 1
  assert strategy_lib.workers_on_host(cluster, "worker", 2) == 2  # localhost is 127.0.0.1
  assert strategy_lib.workers_on_this_host(strategy_lib.make_strategy("one_device")) == 1
