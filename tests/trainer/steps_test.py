"""trainer/steps.py: the compiled train step on real tensors under a real strategy."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer import augment as augment_lib
from trainer import models
from trainer import steps as steps_lib
from trainer import strategy as strategy_lib


@pytest.fixture(scope="module")
def strategy():
  return strategy_lib.make_strategy("one_device")


def test_device_augmentation_changes_what_the_step_trains_on(strategy):
  """--augment_on=device: the step augments its batch (the weights move differently than
  on the raw batch), the identity config trains exactly as no augmentation, and the same
  seed draws the same transforms."""
  images = tf.constant(np.random.default_rng(0).integers(0, 256, (1, 8, 32, 32, 3)), tf.uint8)
  labels = tf.constant([[0, 1, 2, 0, 1, 2, 0, 1]], tf.int32)

  def weights_after_step(augment, steps=1):
    keras.utils.set_random_seed(0)
    with strategy.scope():
      model = models.build("simple", 3, (32, 32, 3))
      optimizer = keras.optimizers.SGD(0.1)
      optimizer.build(model.trainable_variables)
    step = steps_lib.make_train_step(model, optimizer, strategy, 8, augment=augment, seed=3)
    data = tf.data.Dataset.from_tensor_slices((images, labels)).repeat()
    steps_lib.run_steps(step, iter(strategy.experimental_distribute_dataset(data)), steps)
    return [w.numpy() for w in model.trainable_variables]

  plain = weights_after_step(None)
  identity = weights_after_step(augment_lib.AugmentConfig.none())
  augmented = weights_after_step(augment_lib.AugmentConfig())
  for a, b in zip(plain, identity):
    np.testing.assert_array_equal(a, b)
  assert any(not np.allclose(a, b) for a, b in zip(plain, augmented))
  # Same seed, same draws: reproducible.
  for a, b in zip(augmented, weights_after_step(augment_lib.AugmentConfig())):
    np.testing.assert_array_equal(a, b)
