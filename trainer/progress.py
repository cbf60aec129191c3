"""Progress inside an epoch, so that a long epoch (CIFAR-10 on a CPU: minutes) is not silence.

--progress picks the form:
  bar    a bar redrawn in place on stderr after every call of steps (at most 20 steps
         apart), as Keras `fit` draws it; the epoch's end leaves it full, on its own line:

           epoch 3/500  140/351 [=======>...........] 1,130 ex/s  ETA 45 s  loss 2.3104  acc 0.4121

  lines  one log line every --progress_seconds (0 = none), for logs, CI and pipes, where a
         redrawn line would be hundreds of carriage returns:

           epoch 3/500: step 140/351, 1,130 examples/s, epoch ETA 45 s, loss 2.3104, accuracy 0.4121

  auto   (the default) bar when stderr is a terminal that can redraw (not TERM=dumb), else
         lines.

The loss and accuracy are the means of the epoch's steps so far. Short epochs in lines mode
print nothing but their end-of-epoch line.
"""

import os
import sys
import time

from absl import logging

from pipeline.job_progress import duration  # the Beam job's progress line's too

MODES = ("auto", "bar", "lines")
BAR_WIDTH = 20  # characters between the brackets


def resolve(mode, stream=None):
  """"bar" or "lines" for a --progress value: auto is bar on a terminal that can redraw."""
  if mode != "auto":
    return mode
  stream = sys.stderr if stream is None else stream
  try:
    terminal = stream.isatty()
  except (AttributeError, ValueError):  # a replaced or closed stream
    terminal = False
  return "bar" if terminal and os.environ.get("TERM", "") != "dumb" else "lines"


def means(sums):
  """(mean loss, accuracy) of steps.run_steps' running {loss, correct, count} sums."""
  count = float(sums["count"])
  if count <= 0:
    return float("nan"), float("nan")
  return float(sums["loss"]) / count, float(sums["correct"]) / count


def rate_and_eta(done, steps, elapsed):
  """(steps a second so far, seconds left at that rate, or None before the first step) of
  an epoch of `steps` steps, `done` of them in `elapsed` seconds."""
  rate = done / elapsed if elapsed > 0 else 0.0
  return rate, ((steps - done) / rate if rate > 0 else None)


class EpochProgress:
  """fn(steps done, sums so far) for one epoch of `steps` steps of `batch_size` examples, in
  lines mode: a log line every `every_seconds` (0 = none). Use as a context manager, like
  EpochBar."""

  def __init__(self, every_seconds, epoch, epochs, steps, batch_size, *, log=logging.info,
               clock=time.monotonic):
    self.every, self.epoch, self.epochs = every_seconds, epoch, epochs
    self.steps, self.batch_size, self.log, self.clock = steps, batch_size, log, clock
    self.start = self.last = clock()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False

  def __call__(self, done, sums=None):
    now = self.clock()
    if self.every <= 0 or now - self.last < self.every or done >= self.steps:
      return
    self.last = now
    rate, eta = rate_and_eta(done, self.steps, now - self.start)
    line = (f"epoch {self.epoch}/{self.epochs}: step {done}/{self.steps}, "
            f"{rate * self.batch_size:,.0f} examples/s, "
            f"epoch ETA {'unknown' if eta is None else duration(eta)}")
    if sums is not None:
      loss, accuracy = means(sums)
      line += f", loss {loss:.4f}, accuracy {accuracy:.4f}"
    self.log(line)


class EpochBar:
  """fn(steps done, sums so far) for one epoch, in bar mode: redraws one line of `stream`
  (stderr) in place. As a context manager, its exit ends the line however the epoch ended
  (done, interrupted, a non-finite loss), so the next log line starts on a line of its own."""

  def __init__(self, epoch, epochs, steps, batch_size, *, stream=None, clock=time.monotonic):
    self.epoch, self.epochs, self.steps, self.batch_size = epoch, epochs, steps, batch_size
    self.stream = sys.stderr if stream is None else stream
    self.clock = clock
    self.start = clock()
    self.drawn = 0  # the length of the line on screen, 0 = none

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    if self.drawn:
      self.stream.write("\n")
      self.stream.flush()
      self.drawn = 0
    return False

  def line(self, done, sums=None):
    """The bar's text after `done` steps."""
    elapsed = self.clock() - self.start
    width = len(str(self.steps))
    filled = BAR_WIDTH * min(done, self.steps) // self.steps if self.steps else BAR_WIDTH
    if filled >= BAR_WIDTH:
      bar = "=" * BAR_WIDTH
    else:
      bar = "=" * filled + ">" + "." * (BAR_WIDTH - filled - 1)
    text = f"epoch {self.epoch}/{self.epochs}  {done:>{width}}/{self.steps} [{bar}]"
    rate, eta = rate_and_eta(done, self.steps, elapsed)
    if rate > 0:
      text += f" {rate * self.batch_size:,.0f} ex/s"
    if done >= self.steps:
      text += f"  {duration(elapsed)}"
    else:
      text += f"  ETA {'?' if eta is None else duration(eta)}"
    if sums is not None:
      loss, accuracy = means(sums)
      text += f"  loss {loss:.4f}  acc {accuracy:.4f}"
    return text

  def __call__(self, done, sums=None):
    text = self.line(done, sums)
    # Pad over the rest of a longer previous line; \r returns to the line's start.
    self.stream.write("\r" + text + " " * max(0, self.drawn - len(text)))
    self.stream.flush()
    self.drawn = len(text)


def for_epoch(mode, every_seconds, epoch, epochs, steps, batch_size):
  """The progress fn of one epoch for a resolved --progress ("bar" or "lines")."""
  if mode == "bar":
    return EpochBar(epoch, epochs, steps, batch_size)
  return EpochProgress(every_seconds, epoch, epochs, steps, batch_size)
