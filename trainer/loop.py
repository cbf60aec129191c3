"""`train_and_evaluate(config, strategy)`: one custom training loop for every tf.distribute strategy.

Why not `model.fit`: Keras 3's fit fails under MultiWorkerMirroredStrategy ("Attempt to
convert a value (PerReplica...)", keras-team/keras#20585), and one loop for all strategies
means the single-device path that tests exercise is the same code that runs on a cluster.

A run writes into `model_dir`:
  flags.txt          the resolved flags (`--flagfile=<model_dir>/flags.txt` reruns the run)
  checkpoints/       model, optimizer and loop state after every epoch (resume from here)
  best/              the weights with the lowest validation loss so far
  history.csv        epoch, loss, accuracy, val_loss, val_accuracy, time (s)
  tensorboard/       train/ and validation/ scalars per epoch, test/ at the end
  model.keras        the best weights, Keras format
  saved_model/       the best weights, TF SavedModel (serving signature takes raw pixels)
  results.json       test metrics, best epoch, epochs run, throughput, ...
  confusion_matrix.csv  test counts of the best weights: rows true class, columns predicted

Restarting the same command resumes from the last checkpoint. In a multi-worker cluster every
worker runs the same code and calls every save (saving can involve collectives); only the
chief writes into model_dir, the others into model_dir/.worker<N>/, removed again, so that no
two processes write one file (tensorflow/tensorflow#38635).
"""

import csv
import hashlib
import io
import json
import time

from absl import logging
import keras
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from pipeline import dataset_info
from pipeline import verify
from trainer import augment as augment_lib
from trainer import config as config_lib
from trainer import input_pipeline
from trainer import models
from trainer import strategy as strategy_lib

HISTORY_FIELDS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "time")
CHECKPOINTS_TO_KEEP = 2  # the latest, and one more in case the latest is unreadable
# Steps per tf.function call. One Python call per step costs about a millisecond of dispatch,
# a large share of a step on an accelerator (the report's `simple` at batch 128 runs ~2 ms
# steps on one H100); looping inside the function removes it.
STEPS_PER_CALL = 20

_OPTIMIZERS = {
    "adam": keras.optimizers.Adam,
    "sgd": keras.optimizers.SGD,
    "rmsprop": keras.optimizers.RMSprop,
}
assert set(_OPTIMIZERS) == set(config_lib.OPTIMIZERS)


# --- files only the chief writes ----------------------------------------------------------


def _write_text(path, text):
  # Write then rename, so that a run killed mid-write never leaves a half file behind.
  tmp = path + ".tmp"
  with tf.io.gfile.GFile(tmp, "w") as f:
    f.write(text)
  tf.io.gfile.rename(tmp, path, overwrite=True)


def _read_text(path):
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path, "r") as f:
    return f.read()


def write_flags(dirs, config):
  """Writes flags.txt (chief only); logs which flags differ from the previous run's."""
  if not dirs.chief:
    return
  path = dirs.file("flags.txt")
  new = config_lib.flagfile_text(config)
  old = _read_text(path)
  if old is not None and old != new:
    for before, after in config_lib.differences(old, new):
      logging.warning("flags.txt: %s (previous run: %s)", after, before or "not set")
  _write_text(path, new)


# --- history.csv ---------------------------------------------------------------------------


def load_history(dirs, up_to_epoch):
  """Rows of an earlier run's history.csv, up to the epoch the checkpoint restored.

  Rows after it belong to epochs whose checkpoint was never written (the run was killed
  in between): they are dropped and those epochs are trained again.
  """
  text = _read_text(dirs.file("history.csv")) if dirs.chief else None
  if not text:
    return []
  return [r for r in csv.DictReader(io.StringIO(text)) if int(r["epoch"]) <= up_to_epoch]


def write_history(dirs, rows):
  if not dirs.chief:
    return
  out = io.StringIO()
  writer = csv.DictWriter(out, fieldnames=HISTORY_FIELDS, lineterminator="\n")
  writer.writeheader()
  writer.writerows(rows)
  _write_text(dirs.file("history.csv"), out.getvalue())


# --- data ----------------------------------------------------------------------------------


def distributed_train_data(strategy, info, config, first_epoch):
  """An endless distributed dataset of per-replica train batches.

  The seed moves on with the epoch a run starts from, so that a resumed run does not replay
  the shuffle order (and augmentations) of the epochs it has already trained.
  """
  augment = augment_lib.AugmentConfig() if host_augmentation(config) else None
  seed = config.seed + 1_000 * first_epoch

  def dataset_fn(input_context):
    # The files input_pipeline.train_dataset reads (files[id::n]), said once per worker so
    # that a cluster's logs show who reads what.
    pipeline, pipelines = input_context.input_pipeline_id, input_context.num_input_pipelines
    logging.info("input pipeline %d of %d reads train shards %s", pipeline, pipelines,
                 list(info.split("train").shards[pipeline::pipelines]))
    return input_pipeline.train_dataset(
        info, batch_size=input_context.get_per_replica_batch_size(config.batch_size),
        input_context=input_context, seed=seed, augment=augment, cache=config.cache,
        image_size=config.image_size or None, deterministic=config.deterministic)

  return strategy.distribute_datasets_from_function(dataset_fn)


def distributed_eval_data(strategy, info, split, config):
  """(distributed dataset, global steps for one pass over `split`)."""
  steps = []

  def dataset_fn(input_context):
    ds, n = input_pipeline.eval_dataset(
        info, split, batch_size=input_context.get_per_replica_batch_size(config.batch_size),
        input_context=input_context, image_size=config.image_size or None,
        cache=config.cache)
    steps.append(n)
    return ds

  dataset = strategy.distribute_datasets_from_function(dataset_fn)
  # Every pipeline must run the same number of steps, or the collectives of the longer
  # ones would wait forever for the shorter ones.
  if len(set(steps)) != 1:
    raise RuntimeError(f"{split} input pipelines disagree on the number of steps: {steps}")
  return dataset, steps[0]


def host_augmentation(config):
  return config.augment and config.augment_on == "host"


def device_augmentation(config):
  """The AugmentConfig the train step applies itself (--augment_on=device), else None."""
  return augment_lib.AugmentConfig() if config.augment and config.augment_on == "device" \
      else None


def train_steps_per_epoch(info, config):
  full = input_pipeline.steps_per_epoch(info, config.batch_size)
  return min(full, config.steps_per_epoch) if config.steps_per_epoch else full


# --- model, optimizer, loop state --------------------------------------------------------


def make_optimizer(name, learning_rate, *, loss_scaling):
  optimizer = _OPTIMIZERS[name](learning_rate=learning_rate)
  if loss_scaling:
    # float16 gradients underflow without it; bfloat16 has float32's range and needs none.
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
  return optimizer


def _on_gpu(strategy):
  return any("GPU" in d.upper() for d in strategy.extended.worker_devices)


def dtype_policy(mixed_precision, strategy):
  """float32, or the mixed policy the devices are fast at (float16 on GPU, bfloat16 on CPU)."""
  if not mixed_precision:
    return "float32"
  return "mixed_float16" if _on_gpu(strategy) else "mixed_bfloat16"


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


# --- steps ---------------------------------------------------------------------------------


def _sums(per_example_loss, labels, probs, weights):
  """Per-replica sums (not means): summed over replicas and steps they give exact means."""
  correct = tf.cast(tf.equal(tf.argmax(probs, axis=-1, output_type=tf.int32), labels),
                    tf.float32)
  return {"loss": tf.reduce_sum(per_example_loss * weights),
          "correct": tf.reduce_sum(correct * weights),
          "count": tf.reduce_sum(weights)}


def _reduce(strategy, per_replica):
  return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
          for k, v in per_replica.items()}


def _looped(strategy, step_fn, num_classes=None):
  """fn(iterator, num_steps) running `step_fn` on num_steps batches in one tf.function call,
  returning the {loss, correct, count} sums (and "confusion" [true, predicted] counts when
  num_classes is given) over all replicas and steps."""

  @tf.function
  def run(iterator, num_steps):
    totals = {"loss": tf.constant(0.0), "correct": tf.constant(0.0), "count": tf.constant(0.0)}
    if num_classes:
      totals["confusion"] = tf.zeros([num_classes, num_classes])
    for _ in tf.range(num_steps):
      sums = _reduce(strategy, strategy.run(step_fn, args=next(iterator)))
      totals = {k: totals[k] + sums[k] for k in totals}
    return totals

  return run


def make_train_step(model, optimizer, strategy, global_batch_size, *, augment=None, seed=0):
  """Returns train_steps(iterator, n) -> summed {loss, correct, count} of n global batches.

  augment: an AugmentConfig to apply inside the step (--augment_on=device). Its draws are
  seeded by (seed, optimizer step, replica), so they differ per batch and replica and a
  resumed run does not replay them.
  """
  base_seed = tf.constant([seed, 7], tf.int64)

  def step_fn(images, labels):
    if augment is not None:
      replica = tf.distribute.get_replica_context().replica_id_in_sync_group
      step_seed = tf.random.experimental.stateless_fold_in(
          base_seed, tf.cast(optimizer.iterations, tf.int64), alg=augment_lib.RNG_ALG)
      step_seed = tf.random.experimental.stateless_fold_in(step_seed, replica,
                                                           alg=augment_lib.RNG_ALG)
      images = augment_lib.augment_batch(images, augment, seed=step_seed)
    images = tf.cast(images, tf.float32)  # uint8 pixels in; the model rescales
    with tf.GradientTape() as tape:
      probs = model(images, training=True)
      per_example = keras.losses.sparse_categorical_crossentropy(labels, probs)
      # Divide by the GLOBAL batch: the replicas' gradients are summed, so the sum of
      # their losses is the mean over the global batch.
      loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch_size)
      if model.losses:
        loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
      scaled_loss = optimizer.scale_loss(loss)
    grads = tape.gradient(scaled_loss, model.trainable_variables)
    optimizer.apply(grads, model.trainable_variables)
    return _sums(per_example, labels, probs, tf.ones_like(per_example))

  return _looped(strategy, step_fn)


def make_eval_step(model, strategy, num_classes=None):
  """Returns eval_steps(iterator, n) -> summed weighted {loss, correct, count} of n batches
  (and the "confusion" matrix, rows true and columns predicted, if num_classes is given)."""

  def step_fn(images, labels, weights):
    probs = model(tf.cast(images, tf.float32), training=False)
    per_example = keras.losses.sparse_categorical_crossentropy(labels, probs)
    sums = _sums(per_example, labels, probs, weights)  # padding has weight 0
    if num_classes:
      predicted = tf.argmax(probs, axis=-1, output_type=tf.int32)
      sums["confusion"] = tf.math.confusion_matrix(labels, predicted, num_classes,
                                                   weights=weights, dtype=tf.float32)
    return sums

  return _looped(strategy, step_fn, num_classes)


def run_steps(looped_step, iterator, steps):
  """Runs `steps` steps; returns {"loss": mean loss, "accuracy": ..., "examples": count}."""
  totals = None
  for start in range(0, steps, STEPS_PER_CALL):
    # A tensor, not an int: a new Python value would trace the function again.
    sums = looped_step(iterator, tf.constant(min(STEPS_PER_CALL, steps - start)))
    totals = sums if totals is None else {k: totals[k] + v for k, v in sums.items()}
  count = float(totals["count"])
  out = {"loss": float(totals["loss"]) / count, "accuracy": float(totals["correct"]) / count,
         "examples": count}
  if "confusion" in totals:
    out["confusion"] = totals["confusion"].numpy().round().astype(int).tolist()
  return out


def barrier(strategy):
  """Returns once every worker has called it (an all-reduce waits for all of them)."""
  strategy.reduce(tf.distribute.ReduceOp.SUM,
                  strategy.run(tf.function(lambda: tf.constant(1.0))), axis=None)


# --- checkpoints ---------------------------------------------------------------------------


class Checkpoints:
  """The resumable checkpoint (every epoch) and the best-weights checkpoint.

  Both are saved by every worker (saving may run collectives), each into its own
  directory; both are read from the chief's.
  """

  def __init__(self, dirs, model, optimizers, state):
    self.dirs = dirs
    # "optimizer" is the main stage's (the only one without --head_epochs).
    extra = {"head_optimizer": optimizers["head"]} if "head" in optimizers else {}
    self.full = tf.train.Checkpoint(model=model, optimizer=optimizers["main"], **extra,
                                    **state.variables())
    self.weights = tf.train.Checkpoint(model=model)
    self.full_manager = tf.train.CheckpointManager(
        self.full, dirs.write_checkpoints, max_to_keep=CHECKPOINTS_TO_KEEP)
    # Two kept: if a run dies between saving a new best and saving the epoch's checkpoint,
    # the restored state still points at the previous best, which is still there.
    self.best_manager = tf.train.CheckpointManager(self.weights, dirs.write_best, max_to_keep=2)

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
    path = dataset_info.join(self.dirs.read_best, f"ckpt-{epoch}")
    if not tf.io.gfile.exists(path + ".index"):
      raise RuntimeError(f"the best weights (epoch {epoch}) are missing: {path}.index")
    self.weights.restore(path).assert_existing_objects_matched()


# --- TensorBoard and console -------------------------------------------------------------


def make_summary_writers(dirs):
  names = ("train", "validation", "test")
  if not dirs.chief:
    return {n: tf.summary.create_noop_writer() for n in names}
  return {n: tf.summary.create_file_writer(dirs.file(f"tensorboard/{n}")) for n in names}


# tf.summary.scalar needs the tensorboard package, which tensorflow-cpu does not bring; a
# float32 scalar tensor tagged for the "scalars" plugin is what it writes, and what
# TensorBoard reads.
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))


def write_summaries(writer, step, scalars):
  with writer.as_default(step=step):
    for name, value in scalars.items():
      tf.summary.write(name, tf.constant(value, tf.float32), metadata=_SCALAR_METADATA)
  writer.flush()


# --- export --------------------------------------------------------------------------------


def export(model, dirs):
  """model.keras and saved_model/ of the (best) weights. Every worker exports (reading
  distributed variables may need all of them); non-chiefs into their own directory."""
  tf.io.gfile.makedirs(dirs.write_root)
  model.save(dirs.write_path("model.keras"))
  model.export(dirs.write_path("saved_model"), verbose=False)
  dirs.remove_worker_dir()


# --- the run -------------------------------------------------------------------------------


def _build(config, info, strategy):
  """Model, optimizers and loop state, with their variables created under the strategy.

  Returns (model, optimizers, state); optimizers maps each training stage ("head" when
  --head_epochs is set, and "main") to its optimizer, built on the variables it trains.
  """
  keras.utils.set_random_seed(config.seed)  # same initial weights for the same seed
  if config.deterministic:
    tf.config.experimental.enable_op_determinism()
  policy = dtype_policy(config.mixed_precision, strategy)
  loss_scaling = policy == "mixed_float16"
  optimizers = {}
  with strategy.scope():
    model = models.build(config.model, info.num_classes, config.image_shape(info.image_shape),
                         dtype_policy=policy, weights=config.weights)
    # Create each optimizer's slots now, for the variables its stage trains, so that a
    # restore fills them instead of deferring.
    if config.head_epochs:
      models.set_trainable(model, 0)
      optimizers["head"] = make_optimizer(config.optimizer, config.head_learning_rate,
                                          loss_scaling=loss_scaling)
      optimizers["head"].build(model.trainable_variables)
    models.set_trainable(model, config_lib.trainable_layers(config))
    optimizers["main"] = make_optimizer(config.optimizer, config.learning_rate,
                                        loss_scaling=loss_scaling)
    optimizers["main"].build(model.trainable_variables)
  # Outside the scope: plain host variables. Every worker updates its own copy from the
  # same all-reduced numbers, so the copies agree without mirroring.
  state = LoopState()
  return model, optimizers, state


def stage_of(config, epochs_done):
  """The training stage of the next epoch: "head" (base frozen) or "main"."""
  return "head" if epochs_done < config.head_epochs else "main"


class TrainSteps:
  """The train step of each stage, made when first needed; switching stage sets which
  layers train (the two stages' steps update different variables)."""

  def __init__(self, model, optimizers, strategy, config):
    self.model, self.optimizers, self.strategy, self.config = model, optimizers, strategy, config
    self.steps = {}
    self.stage = None

  def for_epoch(self, epochs_done):
    stage = stage_of(self.config, epochs_done)
    if stage != self.stage:
      layers = 0 if stage == "head" else config_lib.trainable_layers(self.config)
      trained = models.set_trainable(self.model, layers)
      logging.info("stage %s: %d of %d base layers train (%d trainable parameters), "
                   "learning rate %g", stage, trained, len(models.base_layers(self.model)),
                   _count(self.model.trainable_variables),
                   self.config.head_learning_rate if stage == "head"
                   else self.config.learning_rate)
      self.stage = stage
    if stage not in self.steps:
      self.steps[stage] = make_train_step(
          self.model, self.optimizers[stage], self.strategy, self.config.batch_size,
          augment=device_augmentation(self.config),
          # Each stage's optimizer counts its steps from 0: a seed of its own per stage.
          seed=self.config.seed + (1_000_003 if stage == "head" else 0))
    return self.steps[stage]


def _count(variables):
  return int(sum(v.shape.num_elements() for v in variables))


def train_and_evaluate(config, strategy):
  """Trains `config.model` on `config.data_dir` until early stopping or `config.epochs`,
  then evaluates the best weights on the test split and exports them. Returns results."""
  started = time.time()
  config_lib.validate(config, model_names=models.MODELS)
  if config.verify_data:
    # Before load: it also turns an unreachable gs:// data_dir into an error naming it.
    verify.check_data_dir(config.data_dir, decode=False)
  info = dataset_info.load(config.data_dir)
  subset = config_lib.class_subset(config, info.class_names)
  if subset is not None:
    info = info.subset(subset)
    logging.info("training on %d of the data's classes: %s", info.num_classes,
                 ", ".join(info.class_names))
  config_lib.check_against_data(config, info, strategy.num_replicas_in_sync,
                                strategy_lib.num_workers(strategy))
  dirs = strategy_lib.RunDirs(config.model_dir, strategy)
  tf.io.gfile.makedirs(config.model_dir)
  logging.info("this process writes into %s", dirs.write_root)
  write_flags(dirs, config)

  model, optimizers, state = _build(config, info, strategy)
  checkpoints = Checkpoints(dirs, model, optimizers, state)
  resumed_from = checkpoints.restore_latest()
  if config.init_from and not resumed_from:
    copied = models.init_from(model, config.init_from)
    logging.info("--init_from=%s: copied the weights of %d layers (all but the head)",
                 config.init_from, copied)
  first_epoch = int(state.epoch)
  history = load_history(dirs, first_epoch)
  if resumed_from:
    logging.info("resuming from %s: %d epochs done, best epoch %d (val_loss %.4f)",
                 resumed_from, first_epoch, int(state.best_epoch), float(state.best_val_loss))

  steps = train_steps_per_epoch(info, config)
  train_iterator = iter(distributed_train_data(strategy, info, config, first_epoch))
  val_data, val_steps = distributed_eval_data(strategy, info, "validation", config)
  train_steps = TrainSteps(model, optimizers, strategy, config)
  eval_step = make_eval_step(model, strategy)
  writers = make_summary_writers(dirs)
  logging.info("training %s (%d parameters) on %d replica(s) with %s: %d steps of %d "
               "examples per epoch, %d validation steps", config.model, model.count_params(),
               strategy.num_replicas_in_sync, strategy_lib.name_of(strategy), steps,
               config.batch_size, val_steps)

  speeds = []  # (train examples, train seconds) of each epoch this process trains
  while not state.should_stop(config):
    train_step = train_steps.for_epoch(int(state.epoch))
    epoch_start = time.time()
    train = run_steps(train_step, train_iterator, steps)
    speeds.append((train["examples"], time.time() - epoch_start))
    # The validation loss is reduced over all workers, so every worker takes the same
    # early-stopping decision.
    val = run_steps(eval_step, iter(val_data), val_steps)
    if state.end_epoch(val["loss"]):
      checkpoints.save_best(int(state.epoch))
    row = {"epoch": int(state.epoch), "loss": train["loss"], "accuracy": train["accuracy"],
           "val_loss": val["loss"], "val_accuracy": val["accuracy"],
           "time": round(time.time() - epoch_start, 3)}
    history.append(row)
    # history.csv before the checkpoint: a restart drops rows past the restored epoch, so
    # the file always ends at the checkpoint's epoch.
    write_history(dirs, history)
    checkpoints.save(int(state.epoch))
    _end_of_epoch_report(writers, row, speeds[-1][0] / speeds[-1][1], config, state)

  test = _test_best_weights(strategy, checkpoints, state, model, info, config)
  write_summaries(writers["test"], int(state.best_epoch),
                  {"loss": test["loss"], "accuracy": test["accuracy"]})
  export(model, dirs)
  results = _results(config, strategy, info, state, test, speeds, first_epoch, started,
                     _count(model.trainable_variables))
  if dirs.chief:
    write_confusion_matrix(dirs, info.class_names, test["confusion"])
    _write_text(dirs.file("results.json"), json.dumps(results, indent=2) + "\n")
  logging.info("test_loss %.4f test_accuracy %.4f (best epoch %d of %d)%s",
               test["loss"], test["accuracy"], results["best_epoch"], results["epochs_run"],
               ", stopped early" if results["stopped_early"] else "")
  # Workers kept in sync end with the same digest; compare it across their logs.
  logging.info("final weights sha256 %s", weights_digest(model))
  dirs.remove_worker_dir()
  return results


def weights_digest(model):
  """sha256 over the bytes of every weight of `model` (this worker's copy)."""
  digest = hashlib.sha256()
  for weight in model.weights:
    digest.update(keras.ops.convert_to_numpy(weight).tobytes())
  return digest.hexdigest()


def _end_of_epoch_report(writers, row, examples_per_s, config, state):
  """TensorBoard scalars and the console line of one epoch."""
  write_summaries(writers["train"], row["epoch"], {
      "loss": row["loss"], "accuracy": row["accuracy"], "examples_per_s": examples_per_s})
  write_summaries(writers["validation"], row["epoch"],
                  {"loss": row["val_loss"], "accuracy": row["val_accuracy"]})
  logging.info(
      "epoch %d/%d: loss %.4f accuracy %.4f | val_loss %.4f val_accuracy %.4f | %.1f s, "
      "%.0f examples/s | best epoch %d, %d/%d epochs without improvement",
      row["epoch"], config.epochs, row["loss"], row["accuracy"], row["val_loss"],
      row["val_accuracy"], row["time"], examples_per_s, int(state.best_epoch),
      int(state.epochs_since_best), config.patience)


def _test_best_weights(strategy, checkpoints, state, model, info, config):
  """Loads the best weights into the model and evaluates them on the test split, with the
  confusion matrix."""
  barrier(strategy)  # the chief's last best/ save is complete before anyone reads it
  checkpoints.restore_best(int(state.best_epoch))
  test_data, test_steps = distributed_eval_data(strategy, info, "test", config)
  eval_step = make_eval_step(model, strategy, num_classes=info.num_classes)
  return run_steps(eval_step, iter(test_data), test_steps)


def write_confusion_matrix(dirs, class_names, confusion):
  """confusion_matrix.csv: a header of predicted class names, then one row per true class."""
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  writer.writerow(["true\\predicted", *class_names])
  for name, row in zip(class_names, confusion):
    writer.writerow([name, *row])
  _write_text(dirs.file("confusion_matrix.csv"), out.getvalue())


def _results(config, strategy, info, state, test, speeds, first_epoch, started,
             trainable_parameters):
  # The first epoch a process trains includes tracing the steps: leave it out of the
  # throughput when there is anything else to measure.
  steady = speeds[1:] or speeds
  seconds = sum(s for _, s in steady)
  return {
      "test_loss": test["loss"],
      "test_accuracy": test["accuracy"],
      "test_examples": int(test["examples"]),
      "best_epoch": int(state.best_epoch),
      "best_val_loss": float(state.best_val_loss),
      "epochs_run": int(state.epoch),
      "resumed_from_epoch": first_epoch,
      "stopped_early": int(state.epochs_since_best) >= config.patience,
      "examples_per_s": sum(n for n, _ in steady) / seconds if seconds else None,
      "wall_time_s": round(time.time() - started, 3),
      "num_replicas": strategy.num_replicas_in_sync,
      "strategy": strategy_lib.name_of(strategy),
      "model": config.model,
      "trainable_parameters": trainable_parameters,
      "global_batch_size": config.batch_size,
      "dtype_policy": dtype_policy(config.mixed_precision, strategy),
      "class_names": list(info.class_names),
  }
