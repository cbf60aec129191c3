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


def test_the_train_step_trains_as_keras_fit_does(strategy):
  """The report trained with Keras' compile/fit (Adam, sparse categorical cross-entropy on
  the softmax). The project's own step (tf.distribute, the loss over the global batch,
  optimizer.apply) must move `basic`'s weights, BatchNorm moving statistics included, as fit
  does on the same batches from the same weights. Dropout is set to 0 in both: its masks are
  random draws that the two loops cannot share."""
  rng = np.random.default_rng(0)
  batches, batch_size = 6, 32
  images = rng.integers(0, 256, (batches, batch_size, 32, 32, 3)).astype(np.uint8)
  labels = rng.integers(0, 10, (batches, batch_size)).astype(np.int32)

  def basic_without_dropout():
    keras.utils.set_random_seed(0)
    model = models.build("basic", 10, (32, 32, 3))
    for layer in model.layers:
      if isinstance(layer, keras.layers.Dropout):
        layer.rate = 0.0
    return model

  fitted = basic_without_dropout()
  fitted.compile(optimizer=keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy")
  fitted.fit(images.reshape(-1, 32, 32, 3).astype(np.float32), labels.reshape(-1),
             batch_size=batch_size, shuffle=False, epochs=1, verbose=0)

  with strategy.scope():
    stepped = basic_without_dropout()
    optimizer = keras.optimizers.Adam(1e-4)
    optimizer.build(stepped.trainable_variables)
  step = steps_lib.make_train_step(stepped, optimizer, strategy, batch_size)
  data = tf.data.Dataset.from_tensor_slices((images, labels))
  steps_lib.run_steps(step, iter(strategy.experimental_distribute_dataset(data)), batches)

  assert len(fitted.weights) == len(stepped.weights) > 0
  start = basic_without_dropout()
  moved = 0
  for before, a, b in zip(start.weights, fitted.weights, stepped.weights):
    assert a.shape == b.shape  # the same layer (names are numbered per build)
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6, err_msg=a.path)
    moved += not np.allclose(before.numpy(), a.numpy())
  assert moved == len(start.weights)  # every weight and moving statistic trained
