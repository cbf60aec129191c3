"""The runs a report is about: found under the paths given, read through trainer.workdir
(flags.txt, history.csv, results.json, confusion_matrix.csv, locally or on gs://), named,
sorted, and compared (which flags differ, which run is best).
"""

import dataclasses
import math
import os
import re

from absl import logging

from trainer import workdir

IGNORED_FLAGS = ("model_dir",)  # differs between any two runs; says nothing about them
NONE = "\u2014"  # an em dash: no value


class ReportError(Exception):
  """A bad argument; the message names the path. (A malformed run file raises
  workdir.RunDirError, which names the file.)"""


@dataclasses.dataclass
class Run:
  name: str
  path: str
  flags: dict | None  # {name: display value}; None without flags.txt
  history: list  # [{"epoch": int, "loss": float, ...}], possibly empty
  results: dict | None  # results.json; None if unfinished
  confusion: tuple | None  # (class names, counts [n x n] numpy array) or None

  @property
  def finished(self):
    return self.results is not None

  @property
  def model(self):
    if self.results and self.results.get("model"):
      return str(self.results["model"])
    return (self.flags or {}).get("model", NONE)

  @property
  def best_epoch(self):
    """results.json's best epoch; for an unfinished run, the epoch of the lowest val_loss."""
    if self.results:
      return int(self.results["best_epoch"])
    rows = [r for r in self.history if not math.isnan(r["val_loss"])]
    return min(rows, key=lambda r: r["val_loss"])["epoch"] if rows else None

  @property
  def best_epoch_val_accuracy(self):
    """val_accuracy at best_epoch: that of the weights tested (restored by early stopping);
    None if history.csv has no such row or it is NaN."""
    best = self.best_epoch
    row = next((r for r in self.history if r["epoch"] == best), None)
    return None if row is None or math.isnan(row["val_accuracy"]) else row["val_accuracy"]

  @property
  def best_val_accuracy(self):
    values = [r["val_accuracy"] for r in self.history if not math.isnan(r["val_accuracy"])]
    return max(values) if values else None

  @property
  def epochs_run(self):
    return int(self.results["epochs_run"]) if self.results else len(self.history)

  @property
  def wall_time_s(self):
    """Seconds the run took. results.json's wall_time_s times only the process that
    finished the run: for a resumed run the epochs trained before it (history.csv's times
    of epochs up to resumed_from_epoch) are added, so a run stopped and resumed to be
    tested is not reported as the seconds of its test."""
    if self.results:
      value = self.results.get("wall_time_s")
      if not _is_number(value):
        return None
      resumed = self.results.get("resumed_from_epoch")
      if _is_number(resumed) and resumed > 0:
        value += sum(r["time"] for r in self.history
                     if "time" in r and r["epoch"] <= resumed)
      return float(value)
    times = [r["time"] for r in self.history if "time" in r]
    return sum(times) if times else None


def _is_number(value):
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def find_run_dirs(paths):
  """Run directories named by `paths` (runs or parents of runs), without repeats."""
  markers = " or ".join(workdir.RUN_MARKERS)
  found, seen = [], set()
  for path in paths:
    if not workdir.tf.io.gfile.isdir(path):
      raise ReportError(f"{path}: no such directory")
    if workdir.is_run_dir(path):
      candidates = [path]
    else:
      candidates, others = workdir.run_dirs_under(path)
      if not candidates:
        raise ReportError(f"{path}: not a run directory (no {markers}) and none of its "
                          "subdirectories is one")
      for skipped in others:  # e.g. a run that crashed early
        logging.warning("%s: skipped, no %s", skipped, markers)
    for candidate in candidates:
      key = candidate if "://" in candidate else os.path.realpath(candidate)
      if key not in seen:
        seen.add(key)
        found.append(candidate)
  return found


def run_names(run_dirs):
  """Basenames; where two collide, 'parent/basename'; where those collide, the path."""
  def base(path):
    return os.path.basename(os.path.abspath(path))

  def with_parent(path):
    return f"{base(os.path.dirname(os.path.abspath(path)))}/{base(path)}"

  names = [base(p) for p in run_dirs]
  for step in (with_parent, os.path.abspath):
    counts = {n: names.count(n) for n in names}
    names = [step(p) if counts[n] > 1 else n for p, n in zip(run_dirs, names)]
  return names


def _display_flags(flags):
  """flags.txt as shown: an empty value as '""' (so that it reads as set, to nothing)."""
  return None if flags is None else {k: v if v else '""' for k, v in flags.items()}


def load_runs(paths):
  """Runs named by `paths`, sorted by name; raises ReportError or workdir.RunDirError on
  anything malformed."""
  run_dirs = find_run_dirs(paths)
  runs = []
  for name, run_dir in zip(run_names(run_dirs), run_dirs):
    run_flags = _display_flags(workdir.read_flags(run_dir))
    runs.append(Run(name=name, path=run_dir, flags=run_flags,
                    history=workdir.read_history(run_dir),
                    results=workdir.read_results(run_dir),
                    confusion=workdir.read_confusion_matrix(run_dir)))
    if run_flags is None:
      logging.warning("%s: no flags.txt; its flags are left out of the comparison", run_dir)
    if not runs[-1].finished:
      best = runs[-1].best_val_accuracy
      logging.warning("%s: unfinished (no results.json): %d epochs, best val_accuracy %s",
                      run_dir, len(runs[-1].history), NONE if best is None else f"{best:.4f}")
  return sorted(runs, key=lambda r: natural_key(r.name))


def natural_key(name):
  """Sort key that orders the numbers in a name by value: classes=2 < classes=5 < classes=10."""
  parts = re.split(r"(\d+(?:\.\d+)?(?:e-?\d+)?)", name)
  return [(0, float(p), "") if i % 2 else (1, 0.0, p) for i, p in enumerate(parts)]


def swept_flags(runs):
  """Flags whose value differs between the runs that have flags.txt, in first-seen order.

  A flag missing from some runs' flags.txt (runs made before the trainer had it) counts only
  if the runs that do record it disagree; it is not taken to differ merely by being absent.
  """
  with_flags = [r for r in runs if r.flags is not None]
  names = []
  for run in with_flags:
    names.extend(n for n in run.flags if n not in names)
  swept, partial = [], []
  for name in names:
    if name in IGNORED_FLAGS:
      continue
    recorded = [r for r in with_flags if name in r.flags]
    if len({r.flags[name] for r in recorded}) > 1:
      swept.append(name)
    elif len(recorded) < len(with_flags):
      partial.append(name)
  if partial:
    logging.warning("flags recorded by only some runs, with one value among them, not compared: "
                    "%s (the other runs' flags.txt predate them)", ", ".join(partial))
  return swept


def best_run(runs):
  """The finished run with the highest test accuracy (the first by name on a tie), or None."""
  finished = [r for r in runs if r.finished and not math.isnan(r.results["test_accuracy"])]
  return max(finished, key=lambda r: r.results["test_accuracy"]) if finished else None
