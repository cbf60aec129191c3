"""The Beam job's progress: images done of the planned total, the rate and the ETA, so that a
long job on the DirectRunner, which shows no progress of its own, is not silence.

    build_tfrecords: 15,000 of 50,000 images (30%), 1,200 images/s, ETA 29 s

A line every --progress_seconds (PROGRESS_SECONDS) from the stage that writes the shards, and a
final one from the launcher once the job is over. An image is done once the shard writer has
written its record or rejected it. Who knows what decides what each line can say:

- The launcher knows the total before the job runs: the planned paths of every shard
  (write_shard_plans), exactly, or for archive sources the split sizes that sized the
  shards: "of about", since they are exact for the official CIFAR-100 and a whole tfds
  dataset but not for an archive whose md5 was not checked or a class subset of an
  unbalanced dataset. It does not know the count while the job runs (the DirectRunner hands out
  metrics only at the end), so the final line is the launcher's, from Beam's counters:
  exact on every runner.
- A worker process knows only its own count (module state, shared by the stage's threads).
  With one worker process (the DirectRunner's in_memory and multi_threading modes, where
  every thread of the job counts here) that is the job's count: the line is exact.
- With N worker processes (--direct_running_mode=multi_processing --direct_num_workers=N)
  each prints its own line, of its even share of the total (total / N; "this worker: 7,500
  of about 25,000 images (30%; its share of 50,000 over 2 workers)"), and the ETA is that
  worker's. Beam hands whole shards to workers, so with few shards the shares are uneven: a
  worker past its even share says so and gives no ETA. No line claims a job-wide count.
- On other runners (Dataflow, Flink, Spark) the number of worker processes is not known and
  changes (autoscaling): a worker's line gives its own count and rate only, no total, no
  ETA. The runner's UI shows the job's progress (Dataflow: each step's element counts and
  the build_tfrecords counters, live); the lines go to the worker logs.

The lines are standard-library logging records, as the rest of the pipeline's: in the
launcher absl's handler (app.run) prints them; in a Beam worker process, where absl's app
never ran, Beam's own handler on the root logger relays them to the launcher
(multi_processing) or to the worker logs (Dataflow). pipeline/logs.py lets them through at
the default verbosity because they are logged from this file. No Beam and no TensorFlow
here: the trainer's progress line shares `duration`.
"""

import dataclasses
import logging
import threading
import time
import uuid
from typing import Optional

PROGRESS_SECONDS = 30.0  # --progress_seconds' default, as the trainer's
PREFIX = "build_tfrecords: "


def duration(seconds):
  """A short human duration: 45 s, 3 min 20 s, 2 h 05 min."""
  seconds = max(0, int(round(seconds)))
  if seconds < 60:
    return f"{seconds} s"
  minutes, seconds = divmod(seconds, 60)
  if minutes < 60:
    return f"{minutes} min {seconds:02d} s"
  hours, minutes = divmod(minutes, 60)
  return f"{hours} h {minutes:02d} min"


@dataclasses.dataclass(frozen=True)
class Plan:
  """What the launcher tells the shard writers (pickled with the stage).

  total: the images planned for the shard writers; approximate: whether it is an estimate;
  workers: worker processes counting separately (1: the count is the job's), None when
  unknown (remote runners); every_seconds: between two lines of a worker process (<= 0: no
  lines); run: tells one job's count from another's in the same process (tests run jobs
  one after the other in one process, and the in_memory runner runs the stage in it)."""
  total: int
  approximate: bool = False
  workers: Optional[int] = 1
  every_seconds: float = PROGRESS_SECONDS
  run: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)


def _rate(done, seconds):
  return done / seconds if seconds > 0 else 0.0


def _eta(remaining, rate):
  return duration(remaining / rate) if rate > 0 else "unknown"


def _of(total, approximate):
  return f"{'about ' if approximate else ''}{total:,}"


def progress_line(plan, done, seconds):
  """A worker process's line, `done` images in `seconds` (see the module's docstring)."""
  rate = _rate(done, seconds)
  speed = f"{rate:,.0f} images/s"
  if plan.workers is None:
    return f"{PREFIX}this worker: {done:,} images, {speed} (the runner's UI shows the job's)"
  if plan.workers == 1:
    if done > plan.total:  # an estimated total, exceeded
      return f"{PREFIX}{done:,} of {_of(plan.total, True)} images, {speed}"
    percent = 100 * done / plan.total if plan.total else 100
    return (f"{PREFIX}{done:,} of {_of(plan.total, plan.approximate)} images "
            f"({percent:.0f}%), {speed}, ETA {_eta(plan.total - done, rate)}")
  share = plan.total / plan.workers
  whose = f"its share of {_of(plan.total, plan.approximate)} over {plan.workers} workers"
  if done > share:
    return f"{PREFIX}this worker: {done:,} images (more than {whose}), {speed}"
  return (f"{PREFIX}this worker: {done:,} of about {share:,.0f} images "
          f"({100 * done / share:.0f}%; {whose}), {speed}, ETA {_eta(share - done, rate)}")


def final_line(total, written, rejected, seconds, approximate=False):
  """The launcher's line once the job is over: the images done (written + rejected by the
  shard writers, from Beam's counters) of the total, in the job's `seconds`."""
  done = written + rejected
  percent = 100 * done / total if total else 100
  return (f"{PREFIX}{done:,} of {_of(total, approximate)} images ({percent:.0f}%) in "
          f"{duration(seconds)}, {_rate(done, seconds):,.0f} images/s: {written:,} written, "
          f"{rejected:,} rejected")


class Counter:
  """One worker process's count for one job: add() after every image; logs progress_line
  when plan.every_seconds have passed since it was made (when the process began its first
  shard) or since its last line. Thread-safe: the stage's threads share it."""

  def __init__(self, plan, *, clock=time.monotonic, log=logging.info):
    self.plan, self.clock, self.log = plan, clock, log
    self.done = 0
    self.start = self.last = clock()
    self._lock = threading.Lock()

  def add(self, n=1):
    with self._lock:
      self.done += n
      now = self.clock()
      if self.plan.every_seconds <= 0 or now - self.last < self.plan.every_seconds:
        return
      self.last = now
      line = progress_line(self.plan, self.done, now - self.start)
    self.log(line)


_COUNTERS = {}  # plan.run -> this process's Counter (one small object per job)
_COUNTERS_LOCK = threading.Lock()


def process_counter(plan):
  """This process's Counter of the job `plan` belongs to, made on first use."""
  with _COUNTERS_LOCK:
    counter = _COUNTERS.get(plan.run)
    if counter is None:
      counter = _COUNTERS[plan.run] = Counter(plan)
    return counter
