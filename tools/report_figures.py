"""The report's figures (matplotlib, Agg backend): learning curves, every run's
val_accuracy, test metrics against a swept flag, a confusion matrix; each as PNG bytes.

Axes:
  epoch      whole-number ticks only (an epoch 1.5 does not exist).
  a flag     numeric values go on a log axis (log_flag_axis) when all are > 0 and either
             - max/min >= LOG_FLAG_RATIO (10: they span a decade or more; such sweeps are
               almost always geometric, 1e-4 1e-3 1e-2 or 32 64 ... 512, and a linear axis
               crowds their low end into a corner), or
             - the flag is a learning rate (its name ends in "learning_rate"): rates are
               swept by factors, so even 1e-4 vs 3e-4 reads as a ratio.
             A zero or negative value keeps the axis linear (a log axis cannot show it).
             With up to MAX_VALUE_TICKS values, a log axis is ticked at the values
             themselves, labelled as flags.txt spells them ("0.0003", "512"), instead of at
             powers of ten ("3x10^-4", or no major tick at all inside a narrow range).
  loss       (learning curves) log y when all > 0 and max/min >= 100: one diverging epoch
             would otherwise flatten the rest.
"""

import dataclasses
import io
import math
import re

import matplotlib
import numpy as np

matplotlib.use("Agg")  # before pyplot is imported: no display needed
from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
from matplotlib import lines as mlines  # pylint: disable=g-import-not-at-top,wrong-import-position
from matplotlib import ticker  # pylint: disable=g-import-not-at-top,wrong-import-position

MAX_CELL_TEXT_CLASSES = 20
DPI = 100


@dataclasses.dataclass
class Plot:
  filename: str
  png: bytes
  alt: str


def png(fig):
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


def _epoch_axis(ax):
  """Whole-number ticks on an epoch x axis: matplotlib's default locator puts a 5-epoch run's
  ticks at 1.0, 1.5, 2.0, ..., epochs that do not exist. min_n_ticks=1: with the default (2)
  a one-epoch run's axis has too few whole numbers and the locator falls back to fractions."""
  ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True, min_n_ticks=1))
  ax.set_xlabel("epoch")


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
    _epoch_axis(ax)
    ax.set_ylabel(metric)
    ax.set_title(f"{run.name}: {metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  return fig


MAX_MARKERS = 30  # per line of the overlay; past that the dots merge into a thick line
BEST_MARKER = "*"


def val_accuracy_figure(runs):
  """Every run's val_accuracy per epoch, one line each, a dot per epoch (every k-th past
  MAX_MARKERS epochs) so that short runs do not read as straight segments, and a star at
  the run's best epoch: the weights early stopping restored and the test metrics are of."""
  fig, ax = plt.subplots(figsize=(10, 4.5))
  any_best = False
  for i, (run, color) in enumerate(zip(runs, _colors(len(runs)))):
    epochs = [r["epoch"] for r in run.history]
    ax.plot(epochs, [r["val_accuracy"] for r in run.history],
            color=color, linestyle=("-", "--", ":")[(i // 20) % 3], marker="o", markersize=3,
            markevery=max(1, math.ceil(len(epochs) / MAX_MARKERS)),
            label=run.name + ("" if run.finished else " (unfinished)"))
    best_accuracy = run.best_epoch_val_accuracy
    if best_accuracy is not None:
      any_best = True
      # The label starts with "_": matplotlib leaves it out of the legend, which has one
      # entry for all the stars (below) instead of one per run.
      ax.plot([run.best_epoch], [best_accuracy], linestyle="none", marker=BEST_MARKER,
              markersize=12, color=color, markeredgecolor="black", markeredgewidth=0.6, zorder=3,
              label=f"_best epoch of {run.name}")
  handles, _ = ax.get_legend_handles_labels()
  if any_best:
    handles.append(mlines.Line2D(
        [], [], linestyle="none", marker=BEST_MARKER, markersize=10, color="0.6",
        markeredgecolor="black", markeredgewidth=0.6,
        label="best epoch (lowest val_loss; so far if unfinished)"))
  _epoch_axis(ax)
  ax.set_ylabel("val_accuracy")
  ax.set_title("val_accuracy of every run")
  ax.grid(alpha=0.3)
  ax.legend(handles=handles, fontsize=8 if len(runs) <= 12 else 6, loc="center left",
            bbox_to_anchor=(1.01, 0.5))
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


LOG_FLAG_RATIO = 10
MAX_VALUE_TICKS = 12


def log_flag_axis(flag, numbers):
  """Whether a swept flag's numeric values belong on a log axis (the module docstring's
  rule)."""
  if not numbers or min(numbers) <= 0 or len(set(numbers)) < 2:
    return False
  return flag.endswith("learning_rate") or max(numbers) / min(numbers) >= LOG_FLAG_RATIO


def _tick_at_values(axis, positions, labels):
  """Major ticks at `positions` labelled `labels`, and no minor tick labels (a log axis
  labels its minor ticks inside a narrow range)."""
  axis.set_major_locator(ticker.FixedLocator(positions))
  axis.set_major_formatter(ticker.FixedFormatter(labels))
  axis.set_minor_formatter(ticker.NullFormatter())


def flag_figure(flag, runs):
  """(figure, description): test accuracy and loss against `flag`, over the finished runs."""
  points = [(r.flags.get(flag, "(unset)"), r) for r in runs
            if r.finished and r.flags is not None]
  values = [v for v, _ in points]
  numbers = _as_numbers(values)
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  log_x = False
  if numbers is not None:
    log_x = log_flag_axis(flag, numbers)
    distinct = sorted(set(numbers))
    spelled = dict(zip(numbers, values))  # number -> its text in flags.txt (the last seen)
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
        if len(distinct) <= MAX_VALUE_TICKS:
          _tick_at_values(ax.xaxis, distinct, [spelled[d] for d in distinct])
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


def safe_name(name):
  return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "run"
