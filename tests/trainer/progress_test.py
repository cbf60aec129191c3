"""trainer/progress.py: the in-epoch progress line, on a clock the test moves, and its place
after every call of a real train step."""

from tests.trainer import tiny_step
from trainer import progress
from trainer import steps as steps_lib


class Clock:
  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def test_a_line_every_period_with_the_speed_and_the_epochs_eta():
  clock, lines = Clock(), []
  epoch = progress.EpochProgress(30, 3, 500, 351, 128, log=lines.append, clock=clock)
  clock.now += 10
  epoch(20)  # 10 s in: not yet
  clock.now += 25
  epoch(70)  # 35 s in: 70 steps at 2 steps/s, 281 left: 140.5 s
  clock.now += 5
  epoch(80)  # 5 s after the last line: not yet
  clock.now += 400
  epoch(351)  # the epoch's end has its own line
  assert lines == ["epoch 3/500: step 70/351, 256 examples/s, epoch ETA 2 min 20 s"]
  assert [progress.duration(s) for s in (0.4, 59, 61, 3599, 7500)] == [
      "0 s", "59 s", "1 min 01 s", "59 min 59 s", "2 h 05 min"]


def test_off_at_zero_seconds():
  clock, lines = Clock(), []
  epoch = progress.EpochProgress(0, 1, 1, 100, 8, log=lines.append, clock=clock)
  clock.now += 1000
  epoch(50)
  assert lines == []


def test_run_steps_reports_after_every_call():
  step, _, iterator = tiny_step.train_step()
  calls = []
  steps_lib.run_steps(step, iterator, 45, progress=calls.append)
  assert calls == [20, 40, 45]
