"""trainer/progress.py: the in-epoch progress line, on a clock the test moves, and its place
after every call of a real train step."""

import keras
import numpy as np
import tensorflow as tf

from trainer import models
from trainer import progress
from trainer import steps as steps_lib
from trainer import strategy as strategy_lib


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
  strategy = strategy_lib.make_strategy("one_device")
  with strategy.scope():
    model = models.build("simple", 3, (32, 32, 3))
    optimizer = keras.optimizers.SGD(0.01)
    optimizer.build(model.trainable_variables)
  step = steps_lib.make_train_step(model, optimizer, strategy, 4)
  images = tf.constant(np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)), tf.uint8)
  data = tf.data.Dataset.from_tensors((images, tf.constant([0, 1, 2, 0]))).repeat()
  calls = []
  steps_lib.run_steps(step, iter(strategy.experimental_distribute_dataset(data)), 45,
                      progress=calls.append)
  assert calls == [20, 40, 45]
