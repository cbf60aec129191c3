"""Learning-rate schedules (--lr_schedule) of the main training stage, per step in the graph.

  constant  --learning_rate throughout
  cosine    from --learning_rate down to --lr_final_fraction of it along half a cosine, over
            the main stage's epochs (--epochs minus --head_epochs); per step
  step      times --lr_step_factor every --lr_step_epochs epochs; per epoch
  plateau   times --lr_plateau_factor after --lr_plateau_patience epochs without a new lowest
            validation loss; per epoch (its factor and count are checkpoints.LoopState's)

--warmup_epochs multiplies each of them by a linear ramp over its first steps: the rate of
step t (1-based) is t / warmup_steps of the schedule's, so the last step of warmup epoch k
runs at k / warmup_epochs of it.

The rate is a function of the optimizer's own step counter (its `iterations`, which
checkpoints hold and every replica and worker shares) and, for plateau, of a factor that the
loop updates from the all-reduced validation loss, identically on every worker. A resumed run
therefore continues the schedule where it stopped. The --head_epochs stage has its own
optimizer and a constant --head_learning_rate; the schedule starts with the main stage (its
first step is the first step after the head stage), so a warmup eases the unfrozen layers in.
"""

import dataclasses
import math

import keras
import tensorflow as tf

from trainer import config as config_lib


@dataclasses.dataclass(frozen=True)
class Schedule:
  """One main stage's schedule in steps (steps_per_epoch train steps to an epoch)."""
  kind: str
  base_rate: float
  steps_per_epoch: int
  epochs: int  # of the main stage: cosine reaches its end at the last of them
  warmup_epochs: float = 0.0
  final_fraction: float = 0.0  # cosine
  step_epochs: int = 1  # step
  step_factor: float = 0.1  # step

  @classmethod
  def of(cls, config, steps_per_epoch):
    return cls(kind=config.lr_schedule, base_rate=config.learning_rate,
               steps_per_epoch=steps_per_epoch,
               epochs=max(1, config.epochs - config.head_epochs),
               warmup_epochs=config.warmup_epochs, final_fraction=config.lr_final_fraction,
               step_epochs=config.lr_step_epochs, step_factor=config.lr_step_factor)

  @property
  def warmup_steps(self):
    return int(round(self.warmup_epochs * self.steps_per_epoch))

  def rate(self, steps_done, factor=1.0):
    """The rate of the step that completes `steps_done` steps of the stage (1 = its first
    step; an int or an int tensor), times `factor` (plateau's). A float32 tensor."""
    t = tf.cast(steps_done, tf.float32)
    rate = tf.constant(self.base_rate, tf.float32) * tf.cast(factor, tf.float32)
    if self.warmup_steps:
      rate *= tf.minimum(1.0, t / self.warmup_steps)
    if self.kind == "cosine":
      total = self.epochs * self.steps_per_epoch
      span = max(1, total - self.warmup_steps)
      progress = tf.clip_by_value((t - self.warmup_steps) / span, 0.0, 1.0)
      cosine = 0.5 * (1.0 + tf.cos(math.pi * progress))
      rate *= self.final_fraction + (1.0 - self.final_fraction) * cosine
    elif self.kind == "step":
      epoch = tf.math.floordiv(tf.maximum(t - 1.0, 0.0), float(self.steps_per_epoch))
      rate *= tf.pow(tf.constant(self.step_factor, tf.float32),
                     tf.math.floordiv(epoch, float(self.step_epochs)))
    return rate


class LearningRate(keras.optimizers.schedules.LearningRateSchedule):
  """The optimizer's learning_rate: Schedule.rate of its next step (Keras passes the steps
  done so far), times plateau's factor variable when there is one."""

  def __init__(self, schedule, factor=None):
    super().__init__()
    self.schedule, self.factor = schedule, factor

  def __call__(self, step):
    factor = 1.0 if self.factor is None else tf.cast(self.factor, tf.float32)
    return self.schedule.rate(tf.cast(step, tf.float32) + 1.0, factor)

  def get_config(self):
    return dataclasses.asdict(self.schedule)


def for_optimizer(config, steps_per_epoch, factor=None):
  """What the main optimizer takes as learning_rate: the float --learning_rate when it never
  changes (constant without warmup: the optimizer and its checkpoints as before schedules
  existed), else a LearningRate. factor: plateau's variable (LoopState.lr_factor)."""
  schedule = Schedule.of(config, steps_per_epoch)
  if schedule.kind == "constant" and not schedule.warmup_steps:
    return config.learning_rate
  return LearningRate(schedule, factor if config.lr_schedule == "plateau" else None)


def last_step_rate(learning_rate, iterations):
  """The rate of the step that brought an optimizer built with `learning_rate` (a float or
  a LearningRate) to `iterations` steps: the epoch's rate in history.csv."""
  if isinstance(learning_rate, LearningRate):
    # convert_to_numpy: int() fails on the MirroredVariable inside it under MirroredStrategy.
    done = int(keras.ops.convert_to_numpy(iterations))
    rate = float(learning_rate(max(done - 1, 0)))
    return float(f"{rate:.7g}")  # float32 has 7 significant digits: 0.00055, not 0.000549999997
  return float(learning_rate)


assert set(config_lib.LR_SCHEDULES) == {"constant", "cosine", "step", "plateau"}
