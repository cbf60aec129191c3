"""The run directory (`--model_dir`): its file names, who writes where, and the one writer and
the one reader of every file in it.

  flags.txt             the resolved flags; `--flagfile=<model_dir>/flags.txt` reruns the run
                        (written once the flags are known to fit the checkpoint there)
  run.lock              while a run is going: its host and pid (trainer/lock.py)
  checkpoints/          model, optimizer and loop state after every epoch (trainer/checkpoints.py)
  best/                 the weights with the lowest validation loss so far
  history.csv           HISTORY_FIELDS, one row per epoch
  tensorboard/          train/ and validation/ scalars per epoch and every --summary_steps,
                        images of the first batch, test/ at the end (trainer/summaries.py)
  model.keras           the best weights, Keras format (takes raw 0-255 pixels)
  saved_model/          the best weights, TF SavedModel: image bytes in, class names out
                        (signatures: trainer/serving.py)
  results.json          RESULTS_FIELDS: test metrics, best epoch, epochs run, throughput, ...
  confusion_matrix.csv  test counts of the best weights: rows true class, columns predicted

The trainer writes through the writers here; tools (report, sweep, benchmarks) and tests read
through the readers. Everything goes through tf.io.gfile, so a gs:// model_dir is read and
written like a local one.

In a multi-worker cluster every worker runs the same code and calls every save (saving
distributed variables can run collectives, and a worker that skips them stalls the others);
only the chief writes into model_dir, the others into model_dir/.worker<N>/, removed again
after each save, so that no two processes write one file (tensorflow/tensorflow#38635).
"""

import csv
import dataclasses
import io
import json
import math
import os

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from trainer import config as config_lib
from trainer import serving

FLAGS_FILE = "flags.txt"
HISTORY_FILE = "history.csv"
RESULTS_FILE = "results.json"
CONFUSION_FILE = "confusion_matrix.csv"
CHECKPOINTS_DIR = "checkpoints"
BEST_DIR = "best"
TENSORBOARD_DIR = "tensorboard"
KERAS_MODEL = "model.keras"
SAVED_MODEL_DIR = "saved_model"
# A directory is a run once the trainer has written either of these.
RUN_MARKERS = (HISTORY_FILE, RESULTS_FILE)

# history.csv: one row per epoch. `time` is the epoch's seconds (train + validation);
# `learning_rate` the rate of the epoch's last train step (trainer/schedules.py).
# (learning_rate came in 2026-12 before time, which stays last as positional readers expect.)
HISTORY_FIELDS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate",
                  "time")
# Columns that older runs' history.csv lack: read_history leaves them out of those rows.
_LATER_HISTORY_FIELDS = ("time", "learning_rate")
# results.json, in the order it is written.
RESULTS_FIELDS = (
    "test_loss", "test_accuracy", "test_examples", "best_epoch", "best_val_loss",
    "epochs_run", "resumed_from_epoch", "stopped_early", "examples_per_s", "wall_time_s",
    "num_replicas", "strategy", "model", "trainable_parameters", "global_batch_size",
    "dtype_policy", "class_names")
# Numbers in every results.json the trainer has ever written: readers may rely on them.
REQUIRED_RESULTS = ("test_loss", "test_accuracy", "best_epoch", "epochs_run")
SUMMARY_WRITERS = ("train", "validation", "test")


class RunDirError(ValueError):
  """A file of a run directory is malformed; the message names the path."""


def join(directory, name):
  """Joins like posixpath but keeps `gs://bucket` prefixes intact."""
  return directory.rstrip("/") + "/" + name


class RunDirs:
  """Where this process writes a run's files, and where it resumes them from.

  The chief writes into model_dir; any other worker into model_dir/.worker<N>, which
  `remove_worker_dir` deletes after each save. Everyone resumes from the chief's files.
  """

  def __init__(self, model_dir, *, chief=True, worker_index=0):
    self.model_dir = model_dir
    self.chief = chief
    self.write_root = model_dir if chief else join(model_dir, f".worker{worker_index}")
    self.write_checkpoints = join(self.write_root, CHECKPOINTS_DIR)
    self.write_best = join(self.write_root, BEST_DIR)
    self.read_checkpoints = join(model_dir, CHECKPOINTS_DIR)
    self.read_best = join(model_dir, BEST_DIR)

  def file(self, name):
    """A path in the real model_dir (for files that only the chief writes)."""
    return join(self.model_dir, name)

  def write_path(self, name):
    return join(self.write_root, name)

  def remove_worker_dir(self):
    if not self.chief and tf.io.gfile.exists(self.write_root):
      tf.io.gfile.rmtree(self.write_root)


# --- plain files ---------------------------------------------------------------------------


class WriteError(RuntimeError):
  """A run-directory file could not be written (disk full, permissions, ...): the message
  names the file and the system's reason."""


def write_text(path, text):
  """Writes `path` whole or not at all: into a temporary file beside it, then renamed over it,
  so that a run killed (or a disk filling up) mid-write leaves the previous file, never half
  of one. On gs:// the rename is a copy then a delete, each object written whole.

  Raises WriteError naming the path (and removes the temporary file) if it cannot be written.
  """
  # The pid in the name: two processes never write one temporary file.
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    with tf.io.gfile.GFile(tmp, "w") as f:
      f.write(text)
    tf.io.gfile.rename(tmp, path, overwrite=True)
  except (tf.errors.OpError, OSError) as e:
    try:
      if tf.io.gfile.exists(tmp):
        tf.io.gfile.remove(tmp)
    except (tf.errors.OpError, OSError):
      pass
    reason = (getattr(e, "message", None) or str(e)).strip().splitlines()
    raise WriteError(f"cannot write {path}: {reason[0] if reason else type(e).__name__}") \
        from None


def read_text(path):
  """The file's text, or None if it does not exist."""
  if not tf.io.gfile.exists(path):
    return None
  try:
    with tf.io.gfile.GFile(path, "r") as f:
      return f.read()
  except (tf.errors.OpError, UnicodeDecodeError) as e:
    raise RunDirError(f"{path}: cannot read: {e}") from None


def is_run_dir(path):
  return any(tf.io.gfile.exists(join(path, name)) for name in RUN_MARKERS)


def run_dirs_under(path):
  """(run directories, other subdirectories) of a directory that is not itself a run, such as
  a sweep's output: its immediate, non-hidden subdirectories, sorted by name."""
  names = sorted(name.rstrip("/") for name in tf.io.gfile.listdir(path))
  subdirs = [join(path, name) for name in names
             if not name.startswith(".") and tf.io.gfile.isdir(join(path, name))]
  runs = [d for d in subdirs if is_run_dir(d)]
  return runs, [d for d in subdirs if d not in runs]


def training_started(run_dir):
  """True once the trainer has built the model and opened its TensorBoard writers
  (TENSORBOARD_DIR exists): the last step before the first epoch."""
  return tf.io.gfile.exists(join(run_dir, TENSORBOARD_DIR))


# --- flags.txt -----------------------------------------------------------------------------


def flagfile_text(config):
  """The config as absl flagfile lines: `python -m trainer.main --flagfile=FILE` reruns it."""
  lines = []
  for field in dataclasses.fields(config):
    value = getattr(config, field.name)
    if isinstance(value, bool):
      lines.append(f"--{field.name}" if value else f"--no{field.name}")
    else:
      lines.append(f"--{field.name}={value}")
  return "\n".join(lines) + "\n"


_BOOLEAN_FLAGS = frozenset(f.name for f in dataclasses.fields(config_lib.Config)
                           if f.type in (bool, "bool"))


def parse_flags(text):
  """flags.txt text -> {flag name: value as written}, in file order.

  `--name=value` keeps value as written ('' if empty); a bare `--name` is "true" and
  `--noname` "false" (unless `noname` is itself a boolean flag). Comments, blank lines and
  anything not starting with `--` are ignored.
  """
  out = {}
  for line in text.splitlines():
    line = line.strip()
    if not line.startswith("--"):
      continue
    if "=" in line:
      name, value = line[2:].split("=", 1)
      out[name] = value
    else:
      token = line[2:]
      if token.startswith("no") and token not in _BOOLEAN_FLAGS:
        out[token[2:]] = "false"
      else:
        out[token] = "true"
  return out


def flag_differences(old_text, new_text):
  """Flags that changed between two flags.txt texts: [(name, old value or None, new value)]."""
  old, new = parse_flags(old_text), parse_flags(new_text)
  return [(name, old.get(name), value) for name, value in new.items()
          if old.get(name) != value]


def write_flags(dirs, config):
  """Writes flags.txt (chief only). Returns the flags that differ from the file it replaces,
  as flag_differences does ([] for a new run)."""
  if not dirs.chief:
    return []
  path = dirs.file(FLAGS_FILE)
  new = flagfile_text(config)
  old = read_text(path)
  write_text(path, new)
  return flag_differences(old, new) if old is not None and old != new else []


def read_flags(run_dir):
  """{flag name: value as written} of a run's flags.txt, or None if it has none."""
  text = read_text(join(run_dir, FLAGS_FILE))
  return None if text is None else parse_flags(text)


# --- history.csv ---------------------------------------------------------------------------


def history_text(rows):
  out = io.StringIO()
  writer = csv.DictWriter(out, fieldnames=HISTORY_FIELDS, lineterminator="\n")
  writer.writeheader()
  writer.writerows(rows)
  return out.getvalue()


def write_history(dirs, rows):
  """history.csv from rows of HISTORY_FIELDS (chief only)."""
  if dirs.chief:
    write_text(dirs.file(HISTORY_FILE), history_text(rows))


def read_history(run_dir, *, up_to_epoch=None):
  """history.csv -> [{"epoch": int, "loss": float, ..., "time": float}]; [] if absent.

  up_to_epoch: keep only rows of epochs up to it (a resumed run drops the rows of epochs
  whose checkpoint was never written). A missing `time` or `learning_rate` (older runs) is
  left out of a row.
  """
  path = join(run_dir, HISTORY_FILE)
  text = read_text(path)
  if text is None:
    return []
  reader = csv.DictReader(io.StringIO(text))
  if not reader.fieldnames:
    raise RunDirError(f"{path}: empty, expected the header {','.join(HISTORY_FIELDS)}")
  missing = [c for c in HISTORY_FIELDS
             if c not in _LATER_HISTORY_FIELDS and c not in reader.fieldnames]
  if missing:
    raise RunDirError(f"{path}: missing column(s) {', '.join(missing)} "
                      f"(header: {','.join(reader.fieldnames)})")
  rows = []
  for line_number, raw in enumerate(reader, start=2):
    row = {}
    for column in HISTORY_FIELDS:
      value = raw.get(column)
      if column in _LATER_HISTORY_FIELDS and not value:
        continue
      try:
        row[column] = int(value) if column == "epoch" else float(value)
      except (TypeError, ValueError):
        raise RunDirError(f"{path}: line {line_number}: {column} is not a number: "
                          f"{value!r}") from None
    if up_to_epoch is None or row["epoch"] <= up_to_epoch:
      rows.append(row)
  return rows


# --- results.json --------------------------------------------------------------------------


def write_results(dirs, results):
  """results.json (chief only); `results` has exactly RESULTS_FIELDS."""
  if set(results) != set(RESULTS_FIELDS):
    raise ValueError(f"results.json fields {sorted(results)} are not RESULTS_FIELDS")
  if dirs.chief:
    ordered = {k: results[k] for k in RESULTS_FIELDS}
    write_text(dirs.file(RESULTS_FILE), json.dumps(ordered, indent=2) + "\n")


def _is_number(value):
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_results(run_dir):
  """results.json -> dict, or None if the file is absent (an unfinished run)."""
  path = join(run_dir, RESULTS_FILE)
  text = read_text(path)
  if text is None:
    return None
  try:
    results = json.loads(text)
  except json.JSONDecodeError as e:
    raise RunDirError(f"{path}: not valid JSON: {e}") from None
  if not isinstance(results, dict):
    raise RunDirError(f"{path}: expected a JSON object, got {type(results).__name__}")
  missing = [k for k in REQUIRED_RESULTS if k not in results]
  if missing:
    raise RunDirError(f"{path}: missing key(s) {', '.join(missing)}")
  wrong = [k for k in REQUIRED_RESULTS if not _is_number(results[k])]
  if wrong:
    raise RunDirError(f"{path}: not a number: " +
                      ", ".join(f"{k}={results[k]!r}" for k in wrong))
  return results


# --- confusion_matrix.csv ------------------------------------------------------------------


def write_confusion_matrix(dirs, class_names, confusion):
  """A header of predicted class names, then one row per true class (chief only)."""
  if not dirs.chief:
    return
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  writer.writerow(["true\\predicted", *class_names])
  for name, row in zip(class_names, confusion):
    writer.writerow([name, *row])
  write_text(dirs.file(CONFUSION_FILE), out.getvalue())


def read_confusion_matrix(run_dir):
  """confusion_matrix.csv -> (class names, n x n int64 array), or None if absent."""
  path = join(run_dir, CONFUSION_FILE)
  text = read_text(path)
  if text is None:
    return None
  rows = [r for r in csv.reader(io.StringIO(text)) if r]
  if not rows or len(rows[0]) < 2:
    raise RunDirError(f"{path}: expected a header 'true\\predicted,<class>,<class>,...'")
  names = rows[0][1:]
  body = rows[1:]
  if len(body) != len(names):
    raise RunDirError(f"{path}: not square: {len(names)} predicted classes (columns) but "
                      f"{len(body)} true classes (rows)")
  counts = np.zeros((len(names), len(names)), dtype=np.int64)
  for i, row in enumerate(body):
    line = i + 2
    if len(row) != len(names) + 1:
      raise RunDirError(f"{path}: not square: line {line} has {len(row) - 1} counts, "
                        f"expected {len(names)}")
    if row[0] != names[i]:
      raise RunDirError(f"{path}: line {line} is class {row[0]!r} but column {i + 1} is "
                        f"{names[i]!r}: rows and columns must list the classes in one order")
    for j, cell in enumerate(row[1:]):
      try:
        value = float(cell)
      except ValueError:
        value = -1.0
      if not math.isfinite(value) or value < 0 or value != int(value):
        raise RunDirError(f"{path}: line {line}, column {j + 2}: not a count: {cell!r}")
      counts[i, j] = int(value)
  return names, counts


# --- TensorBoard summaries -----------------------------------------------------------------


def summary_writers(dirs):
  """{"train", "validation", "test"} -> summary writer (no-op writers on non-chiefs)."""
  if not dirs.chief:
    return {n: tf.summary.create_noop_writer() for n in SUMMARY_WRITERS}
  return {n: tf.summary.create_file_writer(dirs.file(f"{TENSORBOARD_DIR}/{n}"))
          for n in SUMMARY_WRITERS}


# tf.summary.scalar needs the tensorboard package, which tensorflow-cpu does not bring; a
# float32 scalar tensor tagged for the "scalars" plugin is what it writes, and what
# TensorBoard reads.
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))


def write_scalars(writer, step, scalars):
  with writer.as_default(step=step):
    for name, value in scalars.items():
      tf.summary.write(name, tf.constant(value, tf.float32), metadata=_SCALAR_METADATA)
  writer.flush()


# --- the exported model --------------------------------------------------------------------


def export(model, dirs, class_names):
  """model.keras and saved_model/ of the model's current (best) weights. Every worker exports
  (reading distributed variables may need all of them); non-chiefs into their own directory.

  model.keras is the Keras model as trained: it takes raw 0-255 pixels (float, not divided
  by 255) at its input size, [N, H, W, 3], and returns probabilities; resizing is the
  caller's. saved_model/ takes image bytes or pixels of any size and answers with class
  names (its signatures: trainer/serving.py).
  """
  tf.io.gfile.makedirs(dirs.write_root)
  model.save(dirs.write_path(KERAS_MODEL))
  serving.export(model, dirs.write_path(SAVED_MODEL_DIR), class_names)
  dirs.remove_worker_dir()


def saved_model_dir(path):
  """The SavedModel of a run: `path`/saved_model/, or `path` itself when it is one (a copy
  of a run's saved_model/ on its own)."""
  if tf.io.gfile.exists(join(path, "saved_model.pb")):
    return path
  return join(path, SAVED_MODEL_DIR)


def load_saved_model(path):
  """serving.load of a run's SavedModel (`path`: the run, or its saved_model/ alone).

  A run exported before trainer/serving.py's signatures (2026-12-02: `serve` only, no class
  names) is exported again from its model.keras and results.json's class names into a
  temporary directory, loaded, and the directory removed (loading reads the weights), so that
  older runs answer with names too; the run directory is left as it is.
  """
  import shutil  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  try:
    return serving.load(saved_model_dir(path))
  except serving.OldSavedModelError as e:
    results = read_results(path)
    keras_path = join(path, KERAS_MODEL)
    if not results or not results.get("class_names") or not tf.io.gfile.exists(keras_path):
      raise serving.ServingError(f"{e}; and {path} has no model.keras and results.json "
                                 "class_names to export it again from") from None
  import keras  # pylint: disable=g-import-not-at-top
  model = keras.models.load_model(keras_path, compile=False)
  tmp = tempfile.mkdtemp(prefix="saved_model_")
  try:
    serving.export(model, tmp, results["class_names"])
    return serving.load(tmp)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
