"""SIGINT and SIGTERM stop a run at the next train step, keep the last checkpoint, say how to
resume, and exit 130 / 143 (trainer/interrupts.py): real signals to real trainer processes."""

import json
import os
import re
import signal
import time

from tests import processes
from tests import testdata
from tests.trainer import tiny_step
from trainer import interrupts
from trainer import steps as steps_lib

ALL_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck")


def test_a_train_step_ends_its_call_after_the_step_that_saw_the_request():
  stop = interrupts.StopRequest()  # not installed: requested by hand, as a signal would
  step, optimizer, iterator = tiny_step.train_step(stop_flag=stop.flag)
  assert "stopped" not in steps_lib.run_steps(step, iterator, 5)
  assert int(optimizer.iterations) == 5
  stop.request(signal.SIGTERM)
  result = steps_lib.run_steps(step, iterator, 50)  # 3 calls of up to 20 steps
  assert result["stopped"] == 1 and result["examples"] == 4
  assert int(optimizer.iterations) == 6  # one step ran, the other 49 did not
  assert stop.signum == signal.SIGTERM


def _start(model_dir, data_dir, *flags):
  return processes.Lines(processes.start_trainer(
      f"--data_dir={data_dir}", f"--model_dir={model_dir}", "--epochs=50", "--patience=50",
      "--strategy=one_device", *flags, merge_stderr=True))


def test_sigint_stops_inside_a_long_call_of_steps_and_keeps_the_last_checkpoint(
    make_data_dir, tmp_path):
  # `basic` at 64 px, 20 steps an epoch: one tf.function call of ~5 s on these cores.
  data_dir = make_data_dir(classes=ALL_CLASSES)
  model_dir = tmp_path / "run"
  run = _start(model_dir, data_dir, "--model=basic", "--image_size=64", "--batch_size=16")
  run.wait_for(r"epoch 1/50: loss", 240)
  time.sleep(1.0)  # into epoch 2's call
  run.process.send_signal(signal.SIGINT)
  sent = time.monotonic()
  # The stop itself is quick (0.2 s to the line saying so, quiet 2 cores, 2026-12-02); the
  # process's exit after it is TensorFlow's teardown, 4.6 s quiet and 12 s in CI beside three
  # other tests, so it gets a looser bound (Ctrl-C used to take over 18 s to stop at all).
  run.wait_for(r"^trainer\.main: SIGINT in epoch", 30)
  stopped = time.monotonic() - sent
  code, log = run.finish(60)
  assert code == 130, log[-3000:]
  assert stopped < 5, (stopped, log[-3000:])
  assert time.monotonic() - sent < 30, log[-3000:]
  assert "trainer: SIGINT: stopping at the next train step" in log
  found = re.search(r"^trainer\.main: SIGINT in epoch 2, after step (\d+) of 20: that epoch is "
                    r"abandoned and the checkpoint of epoch 1 kept; rerun the same command to "
                    rf"resume from epoch 1 \(--model_dir={re.escape(str(model_dir))}\)$", log,
                    re.M)
  assert found, log[-3000:]
  assert int(found.group(1)) < 20  # stopped inside the call, not at its end
  assert "Traceback" not in log and "KeyboardInterrupt" not in log
  assert testdata.latest_checkpoint_epoch(model_dir) == 1
  assert not os.path.exists(model_dir / "results.json")


def test_sigterm_exits_143_and_the_runs_flags_txt_resumes_it(data_dir, tmp_path):
  model_dir = tmp_path / "run"
  run = _start(model_dir, data_dir, "--batch_size=16")
  run.wait_for(r"epoch 2/50: loss", 180)
  run.process.send_signal(signal.SIGTERM)
  code, log = run.finish(60)
  assert code == 143, log[-3000:]
  done = testdata.latest_checkpoint_epoch(model_dir)
  assert done >= 2
  assert re.search(rf"^trainer\.main: SIGTERM in epoch {done + 1}, after step \d+ of 6: .*"
                   rf"resume from epoch {done} ", log, re.M), log[-3000:]
  # Resumed from the run's own flags.txt, allowing one more epoch.
  result = processes.run_trainer(f"--flagfile={model_dir}/flags.txt", f"--epochs={done + 1}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"{done} epochs done" in result.stderr
  results = json.loads((model_dir / "results.json").read_text())
  assert (results["resumed_from_epoch"], results["epochs_run"]) == (done, done + 1)
  history = (model_dir / "history.csv").read_text().splitlines()
  assert [row.split(",")[0] for row in history[1:]] == [str(e) for e in range(1, done + 2)]
  assert f"--epochs={done + 1}\n" in (model_dir / "flags.txt").read_text()
