"""Optimizers by name, and the dtype policy (mixed precision) that decides loss scaling."""

import keras

from trainer import config as config_lib

OPTIMIZERS = {
    "adam": keras.optimizers.Adam,
    "sgd": keras.optimizers.SGD,
    "rmsprop": keras.optimizers.RMSprop,
}
assert set(OPTIMIZERS) == set(config_lib.OPTIMIZERS)  # the flag's choices are these


def make_optimizer(name, learning_rate, *, loss_scaling):
  optimizer = OPTIMIZERS[name](learning_rate=learning_rate)
  if loss_scaling:
    # float16 gradients underflow without it; bfloat16 has float32's range and needs none.
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
  return optimizer


def _on_gpu(strategy):
  return any("GPU" in d.upper() for d in strategy.extended.worker_devices)


def dtype_policy(mixed_precision, strategy):
  """float32, or the mixed policy the devices are fast at (float16 on GPU, bfloat16 on CPU)."""
  if not mixed_precision:
    return "float32"
  return "mixed_float16" if _on_gpu(strategy) else "mixed_bfloat16"


def needs_loss_scaling(policy):
  return policy == "mixed_float16"
