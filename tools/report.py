"""An HTML and Markdown report of finished training runs: table, learning curves, sweeps.

    python -m tools.report /work/runs/lr_sweep --out=/tmp/report
    python -m tools.report runs/a runs/b --out=/tmp/report --title="simple vs basic"

Each argument is a run directory (a `--model_dir` of `python -m trainer.main`: it holds
history.csv or results.json) or a parent directory whose immediate subdirectories are run
directories, such as a sweep's output directory. Runs are named by their directory's
basename (prefixed with the parent's name where two basenames collide) and sorted by name,
numbers by value (classes=2 before classes=10).
Files read from each run (see trainer/workdir.py): flags.txt, history.csv, results.json and,
if present, confusion_matrix.csv. A run with history.csv but no results.json is
"unfinished": it is listed with its best val_accuracy so far, and a warning is logged.

Writes into --out:
  report.html   self-contained: inline CSS, every plot embedded as a data:image/png URI
  report.md     the same sections; the plots linked by relative path
  *.png         the plots (matplotlib, Agg backend)

Sections:
  Runs               run, model, the flags that differ between runs, test loss and accuracy
                     (the best test accuracy in bold), best epoch, epochs run, wall time.
  Learning curves    per run, loss and accuracy (train and validation) per epoch, the best
                     epoch (results.json's best_epoch; the lowest val_loss if unfinished)
                     dashed; with more than one run, every run's val_accuracy overlaid.
  Swept flags        one chart per flag whose value differs between the runs' flags.txt
                     (--model_dir never counts; nor does a flag that older runs lack and
                     the others all set alike): test accuracy and test loss of each
                     finished run against the flag's value. Numeric values: sorted, on a
                     log x axis if all positive and max/min >= 10 (learning rates); other
                     values: one bar per value, in the runs' order. When several runs share
                     a value (another flag is swept too, or repeated seeds), each run is a
                     dot and the line (or bar) is the mean of the runs with that value.
  Confusion matrix   of the finished run with the highest test accuracy (or --confusion_run)
                     from its
                     confusion_matrix.csv: colour = fraction of the true class (rows sum to
                     1), counts written in the cells for up to 20 classes.

A directory that is neither a run nor a parent of runs, or a malformed file (bad JSON, a
history.csv without its columns, a confusion matrix that is not square), stops the tool with
a one-line error naming the file. Exit status: 0 written, 1 such an error, 2 bad usage.
"""

import argparse
import base64
import csv
import dataclasses
import datetime
import html
import io
import json
import math
import os
import re
import sys

from absl import logging
import matplotlib
import numpy as np

matplotlib.use("Agg")  # before pyplot is imported: no display needed
from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy")
RESULTS_KEYS = ("test_loss", "test_accuracy", "best_epoch", "epochs_run")
RUN_FILES = ("history.csv", "results.json")
IGNORED_FLAGS = ("model_dir",)  # differs between any two runs; says nothing about them
MAX_CELL_TEXT_CLASSES = 20
DPI = 100
NONE = "\u2014"  # an em dash: no value


class ReportError(Exception):
  """A bad argument or a malformed run file; the message names the path."""


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
  def best_val_accuracy(self):
    values = [r["val_accuracy"] for r in self.history if not math.isnan(r["val_accuracy"])]
    return max(values) if values else None

  @property
  def epochs_run(self):
    return int(self.results["epochs_run"]) if self.results else len(self.history)

  @property
  def wall_time_s(self):
    if self.results:
      value = self.results.get("wall_time_s")
      return float(value) if _is_number(value) else None
    times = [r["time"] for r in self.history if "time" in r]
    return sum(times) if times else None


# --- reading runs --------------------------------------------------------------------------


def _is_number(value):
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _read(path):
  try:
    with open(path, encoding="utf-8") as f:
      return f.read()
  except (OSError, UnicodeDecodeError) as e:
    raise ReportError(f"{path}: cannot read: {e}") from None


def is_run_dir(path):
  return any(os.path.isfile(os.path.join(path, name)) for name in RUN_FILES)


def find_run_dirs(paths):
  """Run directories named by `paths` (runs or parents of runs), without repeats."""
  found, seen = [], set()
  for path in paths:
    if not os.path.isdir(path):
      raise ReportError(f"{path}: no such directory")
    if is_run_dir(path):
      candidates = [path]
    else:
      subdirs = [os.path.join(path, name) for name in sorted(os.listdir(path))
                 if not name.startswith(".") and os.path.isdir(os.path.join(path, name))]
      candidates = [d for d in subdirs if is_run_dir(d)]
      if candidates:
        for skipped in sorted(set(subdirs) - set(candidates)):  # e.g. a run that crashed early
          logging.warning("%s: skipped, no %s", skipped, " or ".join(RUN_FILES))
      else:
        raise ReportError(f"{path}: not a run directory (no {' or '.join(RUN_FILES)}) and "
                          "none of its subdirectories is one")
    for candidate in candidates:
      key = os.path.realpath(candidate)
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


def parse_flags_lines(lines_by_run):
  """flags.txt lines of each run -> [{name: display value}] (None stays None).

  `--name=value` keeps value as written ('""' if empty). A bare `--name` is true and
  `--noname` false; whether `--noX` negates X or is a flag called noX is decided across all
  runs: it is the flag noX if some run has `--nonoX`, else the negation of X.
  """
  bare = set()
  for lines in lines_by_run:
    for line in lines or ():
      if line.startswith("--") and "=" not in line:
        bare.add(line[2:])
  out = []
  for lines in lines_by_run:
    if lines is None:
      out.append(None)
      continue
    flags = {}
    for line in lines:
      if not line.startswith("--"):
        continue
      if "=" in line:
        name, value = line[2:].split("=", 1)
        flags[name] = value if value else '""'
      else:
        token = line[2:]
        if token.startswith("no") and f"no{token}" not in bare:
          flags[token[2:]] = "false"
        else:
          flags[token] = "true"
    out.append(flags)
  return out


def read_flags_lines(run_dir):
  path = os.path.join(run_dir, "flags.txt")
  if not os.path.isfile(path):
    return None
  return [line.strip() for line in _read(path).splitlines() if line.strip()]


def read_history(path):
  """history.csv -> [{"epoch": int, "loss": float, ...}]; [] if the file is absent."""
  if not os.path.isfile(path):
    return []
  reader = csv.DictReader(io.StringIO(_read(path)))
  if not reader.fieldnames:
    raise ReportError(f"{path}: empty, expected the header {','.join(HISTORY_COLUMNS)},time")
  missing = [c for c in HISTORY_COLUMNS if c not in reader.fieldnames]
  if missing:
    raise ReportError(f"{path}: missing column(s) {', '.join(missing)} "
                      f"(header: {','.join(reader.fieldnames)})")
  rows = []
  for line_number, raw in enumerate(reader, start=2):
    row = {}
    for column in HISTORY_COLUMNS + ("time",):
      value = raw.get(column)
      if column == "time" and not value:
        continue
      try:
        row[column] = int(value) if column == "epoch" else float(value)
      except (TypeError, ValueError):
        raise ReportError(f"{path}: line {line_number}: {column} is not a number: "
                          f"{value!r}") from None
    rows.append(row)
  return rows


def read_results(path):
  """results.json -> dict, or None if the file is absent (an unfinished run)."""
  if not os.path.isfile(path):
    return None
  try:
    results = json.loads(_read(path))
  except json.JSONDecodeError as e:
    raise ReportError(f"{path}: not valid JSON: {e}") from None
  if not isinstance(results, dict):
    raise ReportError(f"{path}: expected a JSON object, got {type(results).__name__}")
  missing = [k for k in RESULTS_KEYS if k not in results]
  if missing:
    raise ReportError(f"{path}: missing key(s) {', '.join(missing)}")
  wrong = [k for k in RESULTS_KEYS if not _is_number(results[k])]
  if wrong:
    raise ReportError(f"{path}: not a number: " +
                      ", ".join(f"{k}={results[k]!r}" for k in wrong))
  return results


def read_confusion_matrix(path):
  """confusion_matrix.csv -> (class names, n x n int array), or None if absent."""
  if not os.path.isfile(path):
    return None
  rows = [r for r in csv.reader(io.StringIO(_read(path))) if r]
  if not rows or len(rows[0]) < 2:
    raise ReportError(f"{path}: expected a header 'true\\predicted,<class>,<class>,...'")
  names = rows[0][1:]
  body = rows[1:]
  if len(body) != len(names):
    raise ReportError(f"{path}: not square: {len(names)} predicted classes (columns) but "
                      f"{len(body)} true classes (rows)")
  counts = np.zeros((len(names), len(names)), dtype=np.int64)
  for i, row in enumerate(body):
    line = i + 2
    if len(row) != len(names) + 1:
      raise ReportError(f"{path}: not square: line {line} has {len(row) - 1} counts, "
                        f"expected {len(names)}")
    if row[0] != names[i]:
      raise ReportError(f"{path}: line {line} is class {row[0]!r} but column {i + 1} is "
                        f"{names[i]!r}: rows and columns must list the classes in one order")
    for j, cell in enumerate(row[1:]):
      try:
        value = float(cell)
      except ValueError:
        value = -1.0
      if not math.isfinite(value) or value < 0 or value != int(value):
        raise ReportError(f"{path}: line {line}, column {j + 2}: not a count: {cell!r}")
      counts[i, j] = int(value)
  return names, counts


def load_runs(paths):
  """Runs named by `paths`, sorted by name; raises ReportError on anything malformed."""
  run_dirs = find_run_dirs(paths)
  names = run_names(run_dirs)
  flags = parse_flags_lines([read_flags_lines(d) for d in run_dirs])
  runs = []
  for name, run_dir, run_flags in zip(names, run_dirs, flags):
    runs.append(Run(
        name=name, path=run_dir, flags=run_flags,
        history=read_history(os.path.join(run_dir, "history.csv")),
        results=read_results(os.path.join(run_dir, "results.json")),
        confusion=read_confusion_matrix(os.path.join(run_dir, "confusion_matrix.csv"))))
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


# --- plots ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Plot:
  filename: str
  png: bytes
  alt: str


def _png(fig):
  """The figure as PNG bytes; closes it."""
  out = io.BytesIO()
  fig.savefig(out, format="png", dpi=DPI, bbox_inches="tight")
  plt.close(fig)
  return out.getvalue()


def _colors(n):
  cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
  return [cmap(i % cmap.N) for i in range(n)]


def _maybe_log_y(ax, values):
  values = [v for v in values if not math.isnan(v)]
  if values and min(values) > 0 and max(values) / min(values) >= 100:
    ax.set_yscale("log")


def learning_curves_figure(run):
  """Loss and accuracy per epoch, train and validation; the best epoch dashed."""
  epochs = [r["epoch"] for r in run.history]
  marker = "o" if len(epochs) <= 30 else None
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  for ax, metric in zip(axes, ("loss", "accuracy")):
    ax.plot(epochs, [r[metric] for r in run.history], marker=marker, markersize=3,
            label=f"train {metric}")
    ax.plot(epochs, [r[f"val_{metric}"] for r in run.history], marker=marker, markersize=3,
            label=f"val_{metric}")
    best = run.best_epoch
    if best is not None:
      ax.axvline(best, color="0.3", linestyle="--", linewidth=1,
                 label=f"best epoch {best}" + ("" if run.finished else " so far"))
    if metric == "loss":
      _maybe_log_y(ax, [r[k] for r in run.history for k in ("loss", "val_loss")])
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{run.name}: {metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  return fig


def val_accuracy_figure(runs):
  """Every run's val_accuracy per epoch, one line each."""
  fig, ax = plt.subplots(figsize=(10, 4.5))
  for i, (run, color) in enumerate(zip(runs, _colors(len(runs)))):
    ax.plot([r["epoch"] for r in run.history], [r["val_accuracy"] for r in run.history],
            color=color, linestyle=("-", "--", ":")[(i // 20) % 3],
            label=run.name + ("" if run.finished else " (unfinished)"))
  ax.set_xlabel("epoch")
  ax.set_ylabel("val_accuracy")
  ax.set_title("val_accuracy of every run")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8 if len(runs) <= 12 else 6, loc="center left", bbox_to_anchor=(1.01, 0.5))
  fig.tight_layout()
  return fig


def _as_numbers(values):
  try:
    numbers = [float(v) for v in values]
  except (TypeError, ValueError):
    return None
  return numbers if all(math.isfinite(x) for x in numbers) else None


def _mean(values):
  """Mean of the values that are not NaN (a diverged run's loss); NaN if there are none."""
  values = [v for v in values if not math.isnan(v)]
  return sum(values) / len(values) if values else float("nan")


def flag_figure(flag, runs):
  """(figure, description): test accuracy and loss against `flag`, over the finished runs."""
  points = [(r.flags.get(flag, "(unset)"), r) for r in runs
            if r.finished and r.flags is not None]
  values = [v for v, _ in points]
  numbers = _as_numbers(values)
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  log_x = False
  if numbers is not None:
    log_x = min(numbers) > 0 and max(numbers) / min(numbers) >= 10
    distinct = sorted(set(numbers))
    kind = "line through the mean per value" + (", log-scale x" if log_x else "")
  else:
    distinct = list(dict.fromkeys(values))  # first-seen order = the runs' order
    kind = "bar = mean per value"
  for ax, key, label in zip(axes, ("test_accuracy", "test_loss"),
                            ("test accuracy", "test loss")):
    ys = [float(r.results[key]) for _, r in points]
    xs = numbers if numbers is not None else [distinct.index(v) for v in values]
    positions = distinct if numbers is not None else list(range(len(distinct)))
    means = [_mean([y for x, y in zip(xs, ys) if x == p]) for p in positions]
    if numbers is not None:
      ax.plot(positions, means, color="C0", linewidth=1.5)
      if log_x:
        ax.set_xscale("log")
    else:
      ax.bar(positions, means, color="C0", alpha=0.35, width=0.6)
      ax.set_xticks(positions, [str(d) for d in distinct],
                    rotation=30 if max(len(str(d)) for d in distinct) > 8 else 0,
                    ha="right" if max(len(str(d)) for d in distinct) > 8 else "center")
    ax.scatter(xs, ys, color="C1", zorder=3, s=25)
    ax.set_xlabel(flag)
    ax.set_ylabel(label)
    ax.set_title(f"{label} vs {flag}")
    ax.set_axisbelow(True)
    ax.grid(alpha=0.3)
  fig.suptitle(f"dots: runs; {'line' if numbers is not None else 'bars'}: mean per value",
               fontsize=9, color="0.35", y=0.02, va="bottom")
  fig.tight_layout(rect=(0, 0.05, 1, 1))
  return fig, kind


def confusion_matrix_figure(run):
  """The run's confusion matrix: colour = fraction of the row, counts in the cells."""
  names, counts = run.confusion
  n = len(names)
  totals = counts.sum(axis=1, keepdims=True)
  fractions = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
  size = min(max(5.0, 0.45 * n + 2.5), 24.0)
  fig, ax = plt.subplots(figsize=(size + 1.2, size))
  image = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
  fontsize = 9 if n <= MAX_CELL_TEXT_CLASSES else max(3.0, 9 * MAX_CELL_TEXT_CLASSES / n)
  step = max(1, math.ceil(n / 100))  # past 100 classes, label every step-th class
  ticks = list(range(0, n, step))
  ax.set_xticks(ticks, [names[i] for i in ticks], rotation=90, fontsize=fontsize)
  ax.set_yticks(ticks, [names[i] for i in ticks], fontsize=fontsize)
  if n <= MAX_CELL_TEXT_CLASSES:
    for i in range(n):
      for j in range(n):
        ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                color="white" if fractions[i, j] > 0.5 else "black")
  ax.set_xlabel("predicted class")
  ax.set_ylabel("true class")
  total = int(counts.sum())
  accuracy = np.trace(counts) / total if total else float("nan")
  ax.set_title(f"{run.name}: {total} test examples, {accuracy:.4f} on the diagonal")
  fig.tight_layout()
  return fig


def _safe(name):
  return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "run"


# --- the report ----------------------------------------------------------------------------


def _fmt(value, spec):
  return NONE if value is None else format(value, spec)


def table(runs, flags):
  """(header, rows, best row indices): the runs table as plain text cells."""
  header = ["run", "model", *flags, "test loss", "test accuracy", "best epoch", "epochs run",
            "wall time (min)"]
  rows = []
  for run in runs:
    cells = [run.name, run.model]
    cells += [NONE if run.flags is None else run.flags.get(f, "(unset)") for f in flags]
    if run.finished:
      cells += [f"{run.results['test_loss']:.4f}", f"{run.results['test_accuracy']:.4f}"]
    else:
      cells += [NONE, f"unfinished: best val_accuracy {_fmt(run.best_val_accuracy, '.4f')}"]
    wall = run.wall_time_s
    cells += [_fmt(run.best_epoch, "d"), str(run.epochs_run),
              NONE if wall is None else f"{wall / 60:.1f}"]
    rows.append(cells)
  best = best_run(runs)
  best_rows = [i for i, r in enumerate(runs) if best is not None and r.finished
               and r.results["test_accuracy"] == best.results["test_accuracy"]]
  return header, rows, best_rows


@dataclasses.dataclass
class Section:
  title: str
  caption: str
  plots: list = dataclasses.field(default_factory=list)
  notes: list = dataclasses.field(default_factory=list)  # sentences without a plot


def build_sections(runs, flags, confusion_run=None):
  """The report's plot sections, in order (the runs table comes first, separately)."""
  used = set()

  def filename(stem):
    name, i = f"{stem}.png", 2
    while name in used:
      name, i = f"{stem}_{i}.png", i + 1
    used.add(name)
    return name

  curves = Section(
      "Learning curves",
      "Per run: loss (left) and accuracy (right) of the training and validation splits "
      "after each epoch; the dashed line marks the best epoch (lowest validation loss).")
  for run in runs:
    if run.history:
      curves.plots.append(Plot(filename(f"curves_{_safe(run.name)}"),
                               _png(learning_curves_figure(run)),
                               f"learning curves of {run.name}"))
    else:
      curves.notes.append(f"{run.name}: no epochs recorded (history.csv absent or empty): no "
                          "curves.")
  with_history = [r for r in runs if r.history]
  if len(with_history) > 1:
    curves.notes.append("The last figure overlays the validation accuracy of every run.")
    curves.plots.append(Plot(filename("val_accuracy_all"),
                             _png(val_accuracy_figure(with_history)),
                             "val_accuracy of every run"))
  sections = [curves]

  sweep = Section("Swept flags", "")
  finished_with_flags = [r for r in runs if r.finished and r.flags is not None]
  if not flags:
    sweep.caption = "No flag differs between the runs (--model_dir aside)."
  elif not finished_with_flags:
    sweep.caption = "No finished run with a flags.txt: nothing to plot against the flags."
  else:
    left_out = len(runs) - len(finished_with_flags)
    sweep.caption = (
        "For each flag whose value differs between the runs: test accuracy (left) and test "
        "loss (right) of each finished run (dots) against the flag's value; the line or bar "
        "is the mean of the runs with that value." +
        (f" {left_out} unfinished run(s) or run(s) without flags.txt are left out."
         if left_out else ""))
    for flag in flags:
      fig, kind = flag_figure(flag, runs)
      sweep.plots.append(Plot(filename(f"flag_{_safe(flag)}"), _png(fig),
                              f"test accuracy and loss vs --{flag} ({kind})"))
  sections.append(sweep)

  best = best_run(runs) if confusion_run is None else confusion_run
  which = "the best run" if confusion_run is None else "the chosen run"
  confusion = Section("Confusion matrix", "")
  if best is None:
    confusion.caption = "No finished run: no confusion matrix."
  elif best.confusion is None:
    confusion.caption = (f"{which.capitalize()}, {best.name} (test accuracy "
                         f"{best.results['test_accuracy']:.4f}), has no confusion_matrix.csv.")
  else:
    names = best.confusion[0]
    confusion.caption = (
        f"Test split of {which}, {best.name} (test accuracy "
        f"{best.results['test_accuracy']:.4f}): rows are the true class, columns the "
        "predicted class; the colour is the fraction of the row's examples"
        + (", the number the count." if len(names) <= MAX_CELL_TEXT_CLASSES else ".")
        + f" Classes: {', '.join(names[:100])}{', ...' if len(names) > 100 else ''}.")
    confusion.plots.append(Plot(filename("confusion_matrix"),
                                _png(confusion_matrix_figure(best)),
                                f"confusion matrix of {best.name}"))
  sections.append(confusion)
  return sections


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222;
       padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
tr.best { background: #eef6ee; } tr.unfinished { color: #777; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; height: auto; }
figcaption, p.caption { color: #555; font-size: 0.9em; }
"""


def render_html(title, runs, flags, sections, generated):
  e = html.escape
  header, rows, best_rows = table(runs, flags)
  out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
         f"<title>{e(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
         f"<h1>{e(title)}</h1>", f"<p>{e(generated)}</p>", "<h2>Runs</h2>",
         f'<p class="caption">{e(_table_caption(runs, flags))}</p>', "<table>", "<thead><tr>"]
  out += [f"<th>{e(h)}</th>" for h in header]
  out += ["</tr></thead>", "<tbody>"]
  accuracy_column = header.index("test accuracy")
  for i, (run, cells) in enumerate(zip(runs, rows)):
    css = "best" if i in best_rows else ("unfinished" if not run.finished else "")
    tds = []
    for j, cell in enumerate(cells):
      text = e(cell)
      if j == accuracy_column and i in best_rows:
        text = f"<strong>{text}</strong>"
      tds.append(f"<td>{text}</td>")
    row_open = f'<tr class="{css}">' if css else "<tr>"
    out.append(row_open + "".join(tds) + "</tr>")
  out += ["</tbody>", "</table>"]
  for section in sections:
    out.append(f"<h2>{e(section.title)}</h2>")
    out.append(f'<p class="caption">{e(section.caption)}</p>')
    out += [f"<p>{e(note)}</p>" for note in section.notes]
    for plot in section.plots:
      data = base64.b64encode(plot.png).decode("ascii")
      out += ["<figure>", f'<img src="data:image/png;base64,{data}" alt="{e(plot.alt)}">',
              f"<figcaption>{e(plot.alt)} ({e(plot.filename)})</figcaption>", "</figure>"]
  out += ["</body>", "</html>"]
  return "\n".join(out) + "\n"


def _md_cell(text):
  return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def render_markdown(title, runs, flags, sections, generated):
  header, rows, best_rows = table(runs, flags)
  accuracy_column = header.index("test accuracy")
  out = [f"# {title}", "", generated, "", "## Runs", "", _table_caption(runs, flags), "",
         "| " + " | ".join(_md_cell(h) for h in header) + " |",
         "|" + "|".join(" --- " if i == 0 else " ---: " for i in range(len(header))) + "|"]
  for i, cells in enumerate(rows):
    cells = [_md_cell(c) for c in cells]
    if i in best_rows:
      cells[accuracy_column] = f"**{cells[accuracy_column]}**"
    out.append("| " + " | ".join(cells) + " |")
  for section in sections:
    out += ["", f"## {section.title}", "", section.caption]
    for note in section.notes:
      out += ["", note]
    for plot in section.plots:
      alt = plot.alt.replace("[", "(").replace("]", ")")
      out += ["", f"![{alt}]({plot.filename})"]
  return "\n".join(out) + "\n"


def _table_caption(runs, flags):
  unfinished = [r.name for r in runs if not r.finished]
  text = (f"{len(runs)} run(s). Columns: the model, "
          + (f"the flags that differ between the runs ({', '.join(flags)}), " if flags else "")
          + "test loss and accuracy with the best epoch's weights (the best accuracy in bold), "
          "the best epoch, epochs run and wall time.")
  if unfinished:
    text += (f" Unfinished (no results.json), shown with their best val_accuracy so far: "
             f"{', '.join(unfinished)}.")
  return text


def write_report(paths, out_dir, title="Training report", confusion_run=None):
  """Reads the runs under `paths`, writes the report into out_dir; returns the paths written."""
  runs = load_runs(paths)
  if not runs:
    raise ReportError(f"no runs found in {', '.join(paths)}")
  flags = swept_flags(runs)
  table_flags = [f for f in flags if f != "model"]  # the model has its own column
  chosen = None
  if confusion_run:
    chosen = next((r for r in runs if r.name == confusion_run), None)
    if chosen is None or not chosen.finished:
      raise ReportError(f"--confusion_run={confusion_run}: no finished run of that name; the "
                        f"runs are {', '.join(r.name for r in runs)}")
  sections = build_sections(runs, flags, chosen)
  generated = (f"Generated by tools.report on {datetime.datetime.now():%Y-%m-%d %H:%M} from "
               f"{len(runs)} run(s) in {', '.join(paths)}.")
  os.makedirs(out_dir, exist_ok=True)
  written = []
  for section in sections:
    for plot in section.plots:
      path = os.path.join(out_dir, plot.filename)
      with open(path, "wb") as f:
        f.write(plot.png)
      written.append(path)
  for filename, render in (("report.md", render_markdown), ("report.html", render_html)):
    path = os.path.join(out_dir, filename)
    with open(path, "w", encoding="utf-8") as f:
      f.write(render(title, runs, table_flags, sections, generated))
    written.append(path)
  return written


def main(argv=None):
  parser = argparse.ArgumentParser(
      prog="python -m tools.report", description=__doc__.split("\n")[0],
      epilog="Each RUN_DIR is a trainer --model_dir (history.csv or results.json) or a "
             "directory of them (a sweep's output).")
  parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                      help="a run directory, or a directory whose subdirectories are runs")
  parser.add_argument("--out", required=True,
                      help="directory to write report.html, report.md and the PNGs into")
  parser.add_argument("--title", default="Training report", help="the report's heading")
  parser.add_argument("--confusion_run", default="",
                      help="the run (by name, as in the table) whose confusion matrix is "
                           "shown; default: the run with the best test accuracy")
  args = parser.parse_args(argv)
  try:
    written = write_report(args.run_dirs, args.out, args.title, args.confusion_run or None)
  except ReportError as e:
    sys.exit(f"tools.report: error: {e}")
  for path in written:
    print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
