"""A real `simple` train step on one device, fed one fixed batch of 4 random images over and
over: for tests of how steps run (progress, stop requests), not of what they learn."""

import keras
import numpy as np
import tensorflow as tf

from trainer import models
from trainer import steps as steps_lib
from trainer import strategy as strategy_lib


def train_step(**step_kwargs):
  """(looped train step, its optimizer, an endless iterator of the batch); step_kwargs go to
  steps.make_train_step (e.g. stop_flag)."""
  strategy = strategy_lib.make_strategy("one_device")
  with strategy.scope():
    model = models.build("simple", 3, (32, 32, 3))
    optimizer = keras.optimizers.SGD(0.01)
    optimizer.build(model.trainable_variables)
  step = steps_lib.make_train_step(model, optimizer, strategy, 4, **step_kwargs)
  images = tf.constant(np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)), tf.uint8)
  data = tf.data.Dataset.from_tensors((images, tf.constant([0, 1, 2, 0]))).repeat()
  return step, optimizer, iter(strategy.experimental_distribute_dataset(data))
