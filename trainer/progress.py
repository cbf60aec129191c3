"""Progress inside an epoch: one line every --progress_seconds with the steps done, the speed
and the epoch's ETA, so that a long epoch (CIFAR-10 on a CPU: minutes) is not silence.

    epoch 3/500: step 140/351, 1,130 examples/s, epoch ETA 45 s

It is called after every call of steps (steps.run_steps' `progress`, at most 20 steps apart)
and prints only when --progress_seconds have passed since the epoch began or since its last
line: short epochs print nothing but their end-of-epoch line.
"""

import time

from absl import logging

from pipeline.job_progress import duration  # the Beam job's progress line's too


class EpochProgress:
  """fn(steps done) for one epoch of `steps` steps of `batch_size` examples."""

  def __init__(self, every_seconds, epoch, epochs, steps, batch_size, *, log=logging.info,
               clock=time.monotonic):
    self.every, self.epoch, self.epochs = every_seconds, epoch, epochs
    self.steps, self.batch_size, self.log, self.clock = steps, batch_size, log, clock
    self.start = self.last = clock()

  def __call__(self, done):
    now = self.clock()
    if self.every <= 0 or now - self.last < self.every or done >= self.steps:
      return
    self.last = now
    rate = done / (now - self.start) if now > self.start else 0.0
    eta = duration((self.steps - done) / rate) if rate > 0 else "unknown"
    self.log(f"epoch {self.epoch}/{self.epochs}: step {done}/{self.steps}, "
             f"{rate * self.batch_size:,.0f} examples/s, epoch ETA {eta}")
