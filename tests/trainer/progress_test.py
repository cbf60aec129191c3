"""trainer/progress.py: the in-epoch progress line and bar, on a clock the test moves; their
place after every call of a real train step; and the bar of a real run on a real terminal
(a pseudo-terminal), against the lines of the same run on a pipe."""

import io
import os
import re
import subprocess
import sys

import pytest

from tests import processes
from tests.trainer import tiny_step
from trainer import progress
from trainer import steps as steps_lib


class Clock:
  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def sums(loss, correct, count):
  return {"loss": loss, "correct": correct, "count": count}


def test_a_line_every_period_with_the_speed_the_epochs_eta_and_the_running_means():
  clock, lines = Clock(), []
  epoch = progress.EpochProgress(30, 3, 500, 351, 128, log=lines.append, clock=clock)
  clock.now += 10
  epoch(20, sums(46.0, 640, 2560))  # 10 s in: not yet
  clock.now += 25
  epoch(70, sums(161.0, 3584, 8960))  # 35 s in: 70 steps at 2 steps/s, 281 left: 140.5 s
  clock.now += 5
  epoch(80, sums(184.0, 4096, 10240))  # 5 s after the last line: not yet
  clock.now += 400
  epoch(351, sums(700.0, 22464, 44928))  # the epoch's end has its own line
  assert lines == ["epoch 3/500: step 70/351, 256 examples/s, epoch ETA 2 min 20 s, "
                   "loss 0.0180, accuracy 0.4000"]
  assert [progress.duration(s) for s in (0.4, 59, 61, 3599, 7500)] == [
      "0 s", "59 s", "1 min 01 s", "59 min 59 s", "2 h 05 min"]


def test_lines_off_at_zero_seconds():
  clock, lines = Clock(), []
  epoch = progress.EpochProgress(0, 1, 1, 100, 8, log=lines.append, clock=clock)
  clock.now += 1000
  epoch(50)
  assert lines == []


def test_the_bar_redraws_one_line_and_its_exit_ends_the_line():
  clock, screen = Clock(), io.StringIO()
  with progress.EpochBar(2, 10, 100, 32, stream=screen, clock=clock) as bar:
    clock.now += 4
    bar(20, sums(46.0, 160, 640))  # 5 steps/s, 80 left: 16 s
    clock.now += 16
    bar(100, sums(200.0, 1600, 3200))
  first, last = screen.getvalue().split("\r")[1:]
  assert first == ("epoch 2/10   20/100 [====>...............] 160 ex/s  ETA 16 s  "
                   "loss 0.0719  acc 0.2500")
  assert last == ("epoch 2/10  100/100 [====================] 160 ex/s  20 s  "
                  "loss 0.0625  acc 0.5000    \n")  # padded over the longer first draw


def test_an_interrupted_bar_still_ends_its_line():
  screen = io.StringIO()
  with pytest.raises(KeyboardInterrupt):
    with progress.EpochBar(1, 1, 50, 8, stream=screen, clock=Clock()) as bar:
      bar(20)
      raise KeyboardInterrupt
  assert screen.getvalue().endswith("]  ETA ?\n")
  with progress.EpochBar(1, 1, 50, 8, stream=screen, clock=Clock()):
    pass  # nothing drawn: nothing written
  assert screen.getvalue().count("\n") == 1


def test_auto_is_the_bar_on_a_terminal_and_lines_on_a_pipe_or_a_dumb_terminal(monkeypatch):
  primary, secondary = os.openpty()
  read_end, write_end = os.pipe()
  with os.fdopen(secondary, "w") as terminal, os.fdopen(write_end, "w") as pipe:
    monkeypatch.setenv("TERM", "xterm")
    assert progress.resolve("auto", terminal) == "bar"
    assert progress.resolve("auto", pipe) == "lines"
    assert progress.resolve("lines", terminal) == "lines"
    assert progress.resolve("bar", pipe) == "bar"
    monkeypatch.setenv("TERM", "dumb")
    assert progress.resolve("auto", terminal) == "lines"
  os.close(primary)
  os.close(read_end)


def test_run_steps_reports_after_every_call_with_the_sums_so_far():
  step, _, iterator = tiny_step.train_step()
  calls = []
  steps_lib.run_steps(step, iterator, 45, progress=lambda done, s: calls.append(
      (done, int(s["count"]))))
  assert calls == [(20, 80), (40, 160), (45, 180)]


def _read_all(fd):
  out = b""
  while True:
    try:
      chunk = os.read(fd, 65536)
    except OSError:  # EIO: the child closed its end of the terminal
      return out
    if not chunk:
      return out
    out += chunk


def test_a_real_run_draws_the_bar_on_a_terminal_and_logs_lines_on_a_pipe(data_dir, tmp_path):
  # 4 examples a batch: 24 steps an epoch, two calls of steps (20 + 4), so the bar is drawn
  # twice an epoch; --progress_seconds=0.001 makes lines mode log at every call too.
  flags = [f"--data_dir={data_dir}", "--epochs=2", "--batch_size=4", "--strategy=one_device",
           "--progress_seconds=0.001"]
  primary, secondary = os.openpty()
  child = subprocess.Popen(
      [sys.executable, "-m", "trainer.main", *flags, f"--model_dir={tmp_path / 'tty'}"],
      cwd=processes.REPO, env=processes.command_env({"TERM": "xterm"}),
      stdin=subprocess.DEVNULL, stdout=secondary, stderr=secondary)
  os.close(secondary)
  try:
    screen = _read_all(primary).decode()
    assert child.wait(timeout=240) == 0, screen[-3000:]
  finally:
    os.close(primary)
    if child.poll() is None:
      child.kill()
  screen = screen.replace("\r\n", "\n")  # the terminal's own newline translation
  for epoch in (1, 2):
    draws = re.findall(rf"\repoch {epoch}/2  ?(\d+)/(\d+) \[([=>.]+)\]", screen)
    assert [done for done, _, _ in draws] == ["20", "24"], screen[-3000:]
    assert draws[-1][2] == "=" * progress.BAR_WIDTH
    # The full bar's line ends before the epoch's own line.
    assert re.search(rf"\repoch {epoch}/2  24/24 \[=+\][^\r\n]* loss [\d.]+  acc [\d.]+ *\n"
                     rf"[^\n]*epoch {epoch}/2: loss", screen), screen[-3000:]
  assert ": step 20/24," not in screen  # no lines mode beside the bar

  piped = processes.run_trainer(*flags, f"--model_dir={tmp_path / 'pipe'}")
  assert piped.returncode == 0, piped.stderr[-3000:]
  assert "\r" not in piped.stderr
  assert len(re.findall(r"epoch [12]/2: step 20/24, [\d,]+ examples/s, epoch ETA \d+ s, "
                        r"loss [\d.]+, accuracy [\d.]+$", piped.stderr, re.M)) == 2
