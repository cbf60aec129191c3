"""Checkpoint policy and the early-stopping state that checkpoints carry.

  checkpoints/  the full training state after every epoch: model, optimizer(s), and the
                LoopState (epochs done, best validation loss, its epoch, epochs since it);
                rerunning the same command restores the latest and resumes
  best/         the weights alone, saved whenever the validation loss reaches a new low;
                restored at the end of the run for the test evaluation and the export

Both are saved by every worker (saving may run collectives), each into its own directory
(workdir.RunDirs); both are read from the chief's.
"""

import re

from absl import logging
import tensorflow as tf

from trainer import config as config_lib
from trainer import workdir

CHECKPOINTS_TO_KEEP = 2  # the latest, and one more in case the latest is unreadable
# Two kept: if a run dies between saving a new best and saving the epoch's checkpoint, the
# restored state still points at the previous best, which is still there.
BEST_TO_KEEP = 2


class LoopState:
  """Early-stopping state, and --lr_schedule=plateau's, in tf.Variables so that it is saved
  in the checkpoint."""

  def __init__(self, plateau=False):
    self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    self.best_val_loss = tf.Variable(float("inf"), dtype=tf.float64, trainable=False,
                                     name="best_val_loss")
    self.best_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="best_epoch")
    self.epochs_since_best = tf.Variable(0, dtype=tf.int64, trainable=False,
                                         name="epochs_since_best")
    # plateau only (so that the checkpoints of other schedules are as before): the factor
    # on --learning_rate that trainer/schedules.py multiplies in, and the main-stage epochs
    # since the validation loss last reached a new low or the factor was last reduced.
    self.lr_factor = self.lr_wait = None
    if plateau:
      self.lr_factor = tf.Variable(1.0, dtype=tf.float32, trainable=False, name="lr_factor")
      self.lr_wait = tf.Variable(0, dtype=tf.int64, trainable=False, name="lr_wait")

  def variables(self):
    out = {"epoch": self.epoch, "best_val_loss": self.best_val_loss,
           "best_epoch": self.best_epoch, "epochs_since_best": self.epochs_since_best}
    if self.lr_factor is not None:
      out.update(lr_factor=self.lr_factor, lr_wait=self.lr_wait)
    return out

  def should_stop(self, config):
    return (int(self.epoch) >= config.epochs
            or int(self.epochs_since_best) >= config.patience)

  def stopped_early(self, config):
    return int(self.epochs_since_best) >= config.patience

  def end_epoch(self, val_loss):
    """Records a finished epoch; returns True if its validation loss is the best so far."""
    self.epoch.assign_add(1)
    if val_loss < float(self.best_val_loss):
      self.best_val_loss.assign(val_loss)
      self.best_epoch.assign(self.epoch)
      self.epochs_since_best.assign(0)
      return True
    self.epochs_since_best.assign_add(1)
    return False

  def reduce_on_plateau(self, improved, config):
    """After a main-stage epoch under --lr_schedule=plateau (`improved`: end_epoch's answer,
    from the all-reduced validation loss, so alike on every worker): returns the new factor
    when this epoch reduces it, else None."""
    if improved:
      self.lr_wait.assign(0)
      return None
    self.lr_wait.assign_add(1)
    if int(self.lr_wait) < config.lr_plateau_patience:
      return None
    self.lr_wait.assign(0)
    self.lr_factor.assign(float(self.lr_factor) * config.lr_plateau_factor)
    return float(self.lr_factor)


class CheckpointError(RuntimeError):
  """No checkpoint of a model_dir that holds some can be read; the message names them."""


class CheckpointWriteError(RuntimeError):
  """A checkpoint could not be written (disk full, permissions...); names the path."""


_CHECKPOINT_FILE = re.compile(r"^ckpt-(\d+)(?:\.index|\.data-\d+-of-\d+)$")
STATE_FILE = "checkpoint"  # TensorFlow's CheckpointState text proto: the latest and the kept


def checkpoint_numbers(directory):
  """The numbers N of every checkpoint with any file left in `directory` (ckpt-N.index or
  ckpt-N.data-*) or named by its state file, newest first. A checkpoint that lost its
  .index is listed too: it exists, it just cannot be read."""
  if not tf.io.gfile.isdir(directory):
    return []
  numbers = set()
  for name in tf.io.gfile.listdir(directory):
    match = _CHECKPOINT_FILE.match(name.rstrip("/"))
    if match:
      numbers.add(int(match.group(1)))
  state = workdir.read_text(workdir.join(directory, STATE_FILE)) or ""
  numbers.update(int(n) for n in re.findall(r'checkpoint_paths?: "(?:.*/)?ckpt-(\d+)"', state))
  return sorted(numbers, reverse=True)


def unreadable(path):
  """Why the checkpoint with prefix `path` cannot be read, or None if every tensor in it
  reads back (each is checked against the CRC32C its index holds)."""
  try:
    reader = tf.train.load_checkpoint(path)
    for name in reader.get_variable_to_shape_map():
      reader.get_tensor(name)
  except Exception as e:  # pylint: disable=broad-except
    # Whatever the reader trips on (DataLossError, NotFoundError, the IndexError of a
    # truncated file...), the checkpoint is unusable; say what it was.
    message = getattr(e, "message", None) or str(e) or type(e).__name__
    return f"{type(e).__name__}: {message.strip().splitlines()[0]}"
  return None


def _state_text(directory_numbers):
  """The CheckpointState text proto for the kept checkpoints (oldest first), relative paths
  as tf.train.CheckpointManager writes them."""
  names = [f"ckpt-{n}" for n in sorted(directory_numbers)]
  lines = [f'model_checkpoint_path: "{names[-1]}"']
  lines += [f'all_model_checkpoint_paths: "{name}"' for name in names]
  return "\n".join(lines) + "\n"


class Checkpoints:
  """The resumable checkpoint (every epoch) and the best-weights checkpoint of one run.

  The full checkpoints are written and pruned here rather than by tf.train.CheckpointManager,
  which deletes the older checkpoints as soon as it has written a new one: here a new
  checkpoint must first read back in full, so pruning never removes the last one that
  restores. TensorFlow writes each checkpoint's files under temporary names and renames them
  when complete; the state file is written to a temporary file then renamed too.
  """

  def __init__(self, dirs, model, optimizers, state):
    """optimizers: {"main": ..., ["head": ...]}, one per training stage."""
    self.dirs = dirs
    # "optimizer" is the main stage's (the only one without --head_epochs).
    extra = {"head_optimizer": optimizers["head"]} if "head" in optimizers else {}
    self.full = tf.train.Checkpoint(model=model, optimizer=optimizers["main"], **extra,
                                    **state.variables())
    # Created now, so that every checkpoint holds it: those written by the CheckpointManager
    # before (which counts saves in it) restore with every object matched, and so do these.
    _ = self.full.save_counter
    self.weights = tf.train.Checkpoint(model=model)
    self.best_manager = tf.train.CheckpointManager(self.weights, dirs.write_best,
                                                   max_to_keep=BEST_TO_KEEP)

  def restore_latest(self):
    """Restores the newest checkpoint that reads back; returns its path, or None if there
    is none at all.

    A newer checkpoint that cannot be read (truncated, zeroed, a file missing) is skipped
    with a warning saying why. If checkpoints exist and none reads, CheckpointError: never a
    silent fresh start. One that reads but does not fit the model built from the flags is a
    ConfigError (its older siblings come from the same flags, so none would fit either).
    """
    directory = self.dirs.read_checkpoints
    skipped = []
    for number in checkpoint_numbers(directory):
      path = workdir.join(directory, f"ckpt-{number}")
      problem = unreadable(path)
      if problem:
        logging.warning("skipping checkpoint %s: it cannot be read (%s)", path, problem)
        skipped.append(f"ckpt-{number} ({problem})")
        continue
      try:
        self.full.restore(path).assert_existing_objects_matched()
      except (AssertionError, ValueError, tf.errors.OpError) as e:
        raise config_lib.ConfigError(
            f"--model_dir={self.dirs.model_dir} holds a checkpoint ({path}) that does not "
            f"fit this model/optimizer; use a new --model_dir. ({e})") from None
      if skipped:
        logging.warning("restored %s, the newest checkpoint that reads, instead of %d newer "
                        "unreadable one(s)", path, len(skipped))
      return path
    if skipped:
      raise CheckpointError(
          f"--model_dir={self.dirs.model_dir}: every checkpoint in {directory} is corrupt or "
          f"incomplete: {'; '.join(skipped)}. Move them away to start this run again from "
          "epoch 0, or restore them from a backup")
    return None

  def save(self, epoch):
    """Writes ckpt-<epoch>, reads it back, and only then prunes the older ones."""
    directory = self.dirs.write_checkpoints
    prefix = workdir.join(directory, f"ckpt-{epoch}")
    try:
      tf.io.gfile.makedirs(directory)
      path = self.full.write(prefix)
    except (tf.errors.OpError, OSError) as e:
      _remove_quietly(prefix + "_temp")  # the half-written files, to free the space
      raise CheckpointWriteError(f"cannot save the checkpoint {prefix}: "
                                 f"{_error_text(e)}") from None
    problem = unreadable(path)
    if problem:
      raise CheckpointWriteError(f"the checkpoint just saved, {path}, does not read back "
                                 f"({problem}); the older checkpoints are kept")
    older = [n for n in checkpoint_numbers(directory) if n < epoch]
    keep = [epoch] + older[:CHECKPOINTS_TO_KEEP - 1]
    try:
      workdir.write_text(workdir.join(directory, STATE_FILE), _state_text(keep))
    except workdir.WriteError as e:
      raise CheckpointWriteError(str(e)) from None
    # Checkpoints not kept: the older ones beyond CHECKPOINTS_TO_KEEP, and any newer ones,
    # which are the unreadable ones restore_latest skipped (a dead branch).
    for number in checkpoint_numbers(directory):
      if number not in keep:
        for name in tf.io.gfile.glob(workdir.join(directory, f"ckpt-{number}.*")):
          tf.io.gfile.remove(name)
    self.dirs.remove_worker_dir()

  def save_best(self, epoch):
    try:
      tf.io.gfile.makedirs(self.dirs.write_best)
      self.best_manager.save(checkpoint_number=epoch)
    except (tf.errors.OpError, OSError) as e:
      _remove_quietly(workdir.join(self.dirs.write_best, f"ckpt-{epoch}_temp"))
      raise CheckpointWriteError(f"cannot save the best weights into {self.dirs.write_best}:"
                                 f" {_error_text(e)}") from None
    self.dirs.remove_worker_dir()

  def has_best(self, epoch):
    return epoch > 0 and tf.io.gfile.exists(
        workdir.join(self.dirs.read_best, f"ckpt-{epoch}") + ".index")

  def restore_best(self, epoch):
    path = workdir.join(self.dirs.read_best, f"ckpt-{epoch}")
    if not tf.io.gfile.exists(path + ".index"):
      raise RuntimeError(f"the best weights (epoch {epoch}) are missing: {path}.index")
    self.weights.restore(path).assert_existing_objects_matched()


def _error_text(e):
  """The first line of an OpError's or OSError's message, without TensorFlow's decorations
  ("{{function_node ...}}", "[Op:SaveV2]"): what is left names the file and gives the errno
  text, e.g. ".../ckpt-1_temp/part-00000-of-00001.data-00000-of-00001...; No space left on
  device"."""
  text = getattr(e, "message", None) or str(e)
  text = re.sub(r"^\{\{[^}]*\}\}\s*", "", text.strip())
  text = re.sub(r"\s*\[Op:[^\]]*\]$", "", text.splitlines()[0] if text else "")
  return text or type(e).__name__


def _remove_quietly(path):
  try:
    if tf.io.gfile.exists(path):
      tf.io.gfile.rmtree(path)
  except (tf.errors.OpError, OSError):
    pass
