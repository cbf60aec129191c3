"""Checkpoint policy and the early-stopping state that checkpoints carry.

  checkpoints/  the full training state after every epoch: model, optimizer(s), and the
                LoopState (epochs done, best validation loss, its epoch, epochs since it);
                rerunning the same command restores the latest and resumes
  best/         the weights alone, saved whenever the validation loss reaches a new low;
                restored at the end of the run for the test evaluation and the export

Both are saved by every worker (saving may run collectives), each into its own directory
(workdir.RunDirs); both are read from the chief's.
"""

import tensorflow as tf

from trainer import config as config_lib
from trainer import workdir

CHECKPOINTS_TO_KEEP = 2  # the latest, and one more in case the latest is unreadable
# Two kept: if a run dies between saving a new best and saving the epoch's checkpoint, the
# restored state still points at the previous best, which is still there.
BEST_TO_KEEP = 2


class LoopState:
  """Early-stopping state, in tf.Variables so that it is saved in the checkpoint."""

  def __init__(self):
    self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    self.best_val_loss = tf.Variable(float("inf"), dtype=tf.float64, trainable=False,
                                     name="best_val_loss")
    self.best_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="best_epoch")
    self.epochs_since_best = tf.Variable(0, dtype=tf.int64, trainable=False,
                                         name="epochs_since_best")

  def variables(self):
    return {"epoch": self.epoch, "best_val_loss": self.best_val_loss,
            "best_epoch": self.best_epoch, "epochs_since_best": self.epochs_since_best}

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


class Checkpoints:
  """The resumable checkpoint (every epoch) and the best-weights checkpoint of one run."""

  def __init__(self, dirs, model, optimizers, state):
    """optimizers: {"main": ..., ["head": ...]}, one per training stage."""
    self.dirs = dirs
    # "optimizer" is the main stage's (the only one without --head_epochs).
    extra = {"head_optimizer": optimizers["head"]} if "head" in optimizers else {}
    self.full = tf.train.Checkpoint(model=model, optimizer=optimizers["main"], **extra,
                                    **state.variables())
    self.weights = tf.train.Checkpoint(model=model)
    self.full_manager = tf.train.CheckpointManager(
        self.full, dirs.write_checkpoints, max_to_keep=CHECKPOINTS_TO_KEEP)
    self.best_manager = tf.train.CheckpointManager(self.weights, dirs.write_best,
                                                   max_to_keep=BEST_TO_KEEP)

  def restore_latest(self):
    """Restores the latest checkpoint if there is one; returns its path or None."""
    path = tf.train.latest_checkpoint(self.dirs.read_checkpoints)
    if path:
      try:
        self.full.restore(path).assert_existing_objects_matched()
      except (AssertionError, ValueError, tf.errors.OpError) as e:
        raise config_lib.ConfigError(
            f"--model_dir={self.dirs.model_dir} holds a checkpoint ({path}) that does not "
            f"fit this model/optimizer; use a new --model_dir. ({e})") from None
    return path

  def save(self, epoch):
    tf.io.gfile.makedirs(self.dirs.write_checkpoints)
    self.full_manager.save(checkpoint_number=epoch)
    self.dirs.remove_worker_dir()

  def save_best(self, epoch):
    tf.io.gfile.makedirs(self.dirs.write_best)
    self.best_manager.save(checkpoint_number=epoch)
    self.dirs.remove_worker_dir()

  def restore_best(self, epoch):
    path = workdir.join(self.dirs.read_best, f"ckpt-{epoch}")
    if not tf.io.gfile.exists(path + ".index"):
      raise RuntimeError(f"the best weights (epoch {epoch}) are missing: {path}.index")
    self.weights.restore(path).assert_existing_objects_matched()
