"""--data_service: training input on real tf.data service servers on 127.0.0.1.

The equivalence test runs a dispatcher and one worker in the test process (real gRPC servers,
the trainer's own client); the fault test runs tools.launch_data_service, a dispatcher and two
worker processes, and kills one worker, then the trainer, for real.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from tests import processes
from tests import testdata
from trainer import config as config_lib
from trainer import data_service
from trainer import input_pipeline
from trainer import strategy as strategy_lib
from trainer import train as train_lib

service = tf.data.experimental.service


@pytest.fixture(scope="module")
def data_dir(make_data_dir):
  return make_data_dir(num_shards=4)  # files for two service workers to share


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _history(model_dir):
  """history.csv's rows without the time column (which differs between runs)."""
  with open(os.path.join(model_dir, "history.csv")) as f:
    rows = [line.split(",") for line in f.read().splitlines()]
  drop = rows[0].index("time")
  return [row[:drop] + row[drop + 1:] for row in rows]


def test_one_service_worker_gives_the_run_that_the_host_alone_gives(data_dir, tmp_path):
  # --deterministic and one worker: the service hands over the batches in the order the
  # worker makes them, and the worker makes what the trainer would (--cache=none: a cache
  # would replay the first pass's file order later). So the runs must agree to the bit.
  dispatcher = service.DispatchServer()
  worker = service.WorkerServer(service.WorkerConfig(
      dispatcher_address=dispatcher.target.removeprefix("grpc://")))
  try:
    runs = {}
    for name, address in (("local", ""), ("service", dispatcher.target)):
      config = config_lib.Config(
          data_dir=data_dir, model_dir=str(tmp_path / name), batch_size=16, epochs=2,
          learning_rate=1e-3, deterministic=True, cache="none", data_service=address)
      runs[name] = train_lib.train_and_evaluate(config, strategy_lib.make_strategy("auto"))
    assert _history(tmp_path / "service") == _history(tmp_path / "local")
    assert len(_history(tmp_path / "local")) == 3  # header and 2 epochs
    for key in ("test_loss", "test_accuracy", "best_epoch", "epochs_run"):
      assert runs["service"][key] == runs["local"][key], key
  finally:
    worker._stop()  # pylint: disable=protected-access
    dispatcher._stop()  # pylint: disable=protected-access


def test_a_service_job_is_never_cached(data_dir):
  from pipeline import dataset_info  # pylint: disable=g-import-not-at-top
  info = dataset_info.load(data_dir)
  with pytest.raises(ValueError, match="not cached"):
    input_pipeline.train_dataset(info, batch_size=4, cache="memory", service_job=True)


@pytest.mark.parametrize("address", ["localhost:5050", "grpc://localhost", "http://h:1",
                                     "grpc://h:1/x", "grpc://h:port"])
def test_a_malformed_address_is_refused_by_name(address):
  config = config_lib.Config(data_dir="d", model_dir="m", data_service=address)
  with pytest.raises(config_lib.ConfigError, match=re.escape(f"--data_service: '{address}'")):
    config_lib.validate(config)


def test_a_dispatcher_without_workers_fails_the_check_within_its_timeout():
  dispatcher = service.DispatchServer()
  try:
    started = time.monotonic()
    with pytest.raises(data_service.DataServiceError, match="no worker served an element "
                       "within --worker_timeout=2 s"):
      data_service.check(dispatcher.target, 2)
    assert time.monotonic() - started < 6
  finally:
    dispatcher._stop()  # pylint: disable=protected-access


def test_the_trainer_fails_in_one_line_when_no_dispatcher_answers(data_dir, tmp_path):
  address = f"grpc://127.0.0.1:{_free_port()}"
  started = time.monotonic()
  result = processes.run_trainer(f"--data_dir={data_dir}", f"--model_dir={tmp_path / 'run'}",
                                 "--batch_size=16", f"--data_service={address}",
                                 "--worker_timeout=5",
                                 timeout=120)
  assert result.returncode == 1, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f"trainer.main: error: --data_service={address}: no dispatcher "
                         "answers at 127.0.0.1:"), result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  assert time.monotonic() - started < 60
  assert not os.path.exists(tmp_path / "run" / "flags.txt")  # stopped before the run began


def test_training_goes_on_when_a_service_worker_dies_and_resumes_when_the_trainer_dies(
    data_dir, tmp_path):
  launcher = processes.Lines(processes.start(
      "tools.launch_data_service", "--workers=2", "--heartbeat_seconds=0.5",
      "--worker_timeout_seconds=3", "--grace_seconds=5", merge_stderr=True))
  try:
    ready = launcher.wait_for(r"^\[data_service\] ready: --data_service=grpc://", 120)
    address = ready.split("--data_service=")[1].split()[0]
    pids = [int(launcher.wait_for(rf"^\[data_service\] worker {i} pid \d+", 5).split()[-1])
            for i in range(2)]
    model_dir = str(tmp_path / "run")
    flags = [f"--data_dir={data_dir}", f"--model_dir={model_dir}", "--batch_size=4",
             "--epochs=6", "--patience=50", "--learning_rate=1e-3", "--strategy=one_device",
             f"--data_service={address}", "--worker_timeout=60"]
    trainer = processes.Lines(processes.start_trainer(*flags, merge_stderr=True))
    trainer.wait_for(r"epoch 1/6: loss", 180)
    os.kill(pids[0], signal.SIGKILL)  # a lost input machine
    launcher.wait_for(r"^\[data_service\] worker 0 was killed by SIGKILL; 1 of 2 still serve",
                      10)
    # Training goes on, fed by worker 1 alone, for two more epochs; then the trainer dies.
    trainer.wait_for(r"epoch 3/6: loss", 120)
    os.kill(trainer.process.pid, signal.SIGKILL)
    code, log = trainer.finish(30)
    assert code == -signal.SIGKILL
    done = testdata.latest_checkpoint_epoch(model_dir)
    assert 3 <= done < 6, log[-3000:]
    steps = re.findall(r"(\d+) steps of 4 examples per epoch", log)
    assert steps == ["24"], log[-3000:]  # 96 train images, as without the service

    again = processes.Lines(processes.start_trainer(*flags, merge_stderr=True))  # the same command
    code, log = again.finish(180)
    assert code == 0, log[-4000:]
    assert f"{done} epochs done" in log
    assert re.findall(r"(\d+) steps of 4 examples per epoch", log) == ["24"]
    assert f"-from-epoch-{done}" in log  # a new job for the resumed seed
    with open(os.path.join(model_dir, "results.json")) as f:
      results = json.load(f)
    assert (results["resumed_from_epoch"], results["epochs_run"]) == (done, 6)
    assert [row[0] for row in _history(model_dir)[1:]] == [str(e) for e in range(1, 7)]
  finally:
    if launcher.process.poll() is None:
      launcher.process.send_signal(signal.SIGTERM)
    code, log = launcher.finish(30)
  assert code == 0, log[-3000:]
  assert "[data_service] SIGTERM: stopping 2 worker(s) and the dispatcher" in log
  with pytest.raises(ProcessLookupError):
    os.kill(pids[1], 0)  # the launcher stopped the surviving worker too


def test_the_launcher_refuses_a_worker_role_without_a_dispatcher():
  result = subprocess.run([sys.executable, "-m", "tools.launch_data_service", "--role=workers"],
                          cwd=processes.REPO, env=processes.command_env(), capture_output=True,
                          text=True, timeout=60)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      "tools.launch_data_service: error: --role=workers needs --dispatcher=HOST:PORT (the "
      "address --role=dispatcher printed, without grpc://)")
