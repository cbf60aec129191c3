"""Model builders by name: `build(name, num_classes, image_shape)` -> an uncompiled keras.Model.

Every model takes raw pixels (0..255, float) and rescales them itself, so that an exported
model needs no preprocessing beyond decoding (and resizing to its input size). The softmax
output is always float32: under a mixed precision policy a bfloat16/float16 softmax loses
enough precision to make the cross-entropy of confident predictions noisy.

`simple` and `basic` are the report's two baselines, layer for layer. New models (e.g. a
transfer-learning backbone) are added by writing a builder and registering it in MODELS.
"""

import contextlib

import keras
from keras import layers


def _simple(num_classes, image_shape):
  """The report's `simple` CNN (about 122k parameters at 32x32x3, 10 classes)."""
  return keras.Sequential([
      keras.Input(shape=image_shape),
      layers.Rescaling(1.0 / 255),
      layers.Conv2D(32, (3, 3), activation="relu"),
      layers.MaxPooling2D((2, 2)),
      layers.Conv2D(64, (3, 3), activation="relu"),
      layers.MaxPooling2D((2, 2)),
      layers.Conv2D(64, (3, 3), activation="relu"),
      layers.Flatten(),
      layers.Dense(64, activation="relu"),
      layers.Dense(num_classes, activation="softmax", dtype="float32"),
  ], name="simple")


def _basic_block(filters, kernel, dropout):
  """Conv(relu) -> BN -> LeakyReLU -> MaxPool -> Dropout, as the report stacks them.

  The relu before BN and the LeakyReLU after it are both the report's: kept as written so
  that the baseline is reproduced, not improved.
  """
  return [
      layers.Conv2D(filters, kernel, activation="relu"),
      layers.BatchNormalization(),
      layers.LeakyReLU(negative_slope=0.3),
      layers.MaxPooling2D((2, 2)),
      layers.Dropout(dropout),
  ]


def _basic(num_classes, image_shape):
  """The report's `basic` CNN (about 1.4M parameters at 32x32x3, 10 classes)."""
  return keras.Sequential([
      keras.Input(shape=image_shape),
      layers.Rescaling(1.0 / 255),
      layers.Conv2D(32, (2, 2), activation="relu"),
      *_basic_block(64, (2, 2), 0.2),
      *_basic_block(128, (2, 2), 0.2),
      *_basic_block(256, (3, 3), 0.3),
      layers.Flatten(),
      layers.Dense(1024),
      layers.LeakyReLU(negative_slope=0.3),
      layers.Dropout(0.5),
      layers.Dense(num_classes, activation="softmax", dtype="float32"),
  ], name="basic")


# name -> builder(num_classes, image_shape). The CLI's --model choices come from here.
MODELS = {
    "simple": _simple,
    "basic": _basic,
}


class UnknownModelError(ValueError):
  pass


@contextlib.contextmanager
def _dtype_policy(name):
  """Sets Keras' global dtype policy while layers are created, then puts the old one back.

  Layers read the global policy when they are constructed, so the policy only has to be in
  force during `build`; restoring it keeps one run's choice from leaking into the next
  model built in the same process (tests build many).
  """
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy(name)
  try:
    yield
  finally:
    keras.config.set_dtype_policy(previous)


def build(name, num_classes, image_shape, *, dtype_policy="float32"):
  """Builds model `name` for `num_classes` classes and inputs of `image_shape` (H, W, C).

  dtype_policy: a Keras policy name, e.g. "mixed_bfloat16" (CPU/TPU) or "mixed_float16"
  (GPU); the output layer stays float32 either way.
  """
  if name not in MODELS:
    raise UnknownModelError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
  with _dtype_policy(dtype_policy):
    return MODELS[name](num_classes, tuple(image_shape))
