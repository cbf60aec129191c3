"""`train_and_evaluate(config, strategy)`: one custom training loop for every tf.distribute strategy.

    verify and load the data -> take model_dir's run.lock (the chief) -> build model and
    optimizers under the strategy -> restore the newest checkpoint that reads -> flags.txt
    -> epochs of (train, validate, early-stopping bookkeeping, checkpoint) -> restore the
    best weights -> test -> export -> results.json

A non-finite training or validation loss stops the run in that step (NonFiniteLossError),
exporting the best weights so far.

Why not `model.fit`: Keras 3's fit fails under MultiWorkerMirroredStrategy ("Attempt to
convert a value (PerReplica...)", keras-team/keras#20585), and one loop for all strategies
means the single-device path that tests exercise is the same code that runs on a cluster.

The rooms it draws on: trainer/input_pipeline.py (tf.data), trainer/steps.py (the compiled
steps), trainer/checkpoints.py (checkpoints and early-stopping state), trainer/workdir.py
(every file of the run directory), trainer/models.py and trainer/optimizers.py. Flags live in
trainer/main.py; `python -m trainer.train` runs it too.
"""

import dataclasses
import functools
import hashlib
import math
import time

from absl import logging

from pipeline import logs

# `python -m trainer.train` runs this file before trainer/main.py.
logs.import_tensorflow_if_main(__name__)  # before the imports below load TensorFlow

import keras  # pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position

from pipeline import dataset_info
from pipeline import verify
from trainer import augment as augment_lib
from trainer import cache as cache_lib
from trainer import checkpoints as checkpoints_lib
from trainer import config as config_lib
from trainer import data_service
from trainer import input_pipeline
from trainer import interrupts
from trainer import lock as lock_lib
from trainer import models
from trainer import optimizers as optimizers_lib
from trainer import progress as progress_lib
from trainer import schedules
from trainer import seeds
from trainer import steps as steps_lib
from trainer import strategy as strategy_lib
from trainer import summaries
from trainer import workdir


def train_and_evaluate(config, strategy, stop=None):
  """Trains `config.model` on `config.data_dir` until early stopping or `config.epochs`,
  then evaluates the best weights on the test split and exports them. Returns results.

  Holds `<model_dir>/run.lock` while it runs (the chief, for the whole cluster): a second
  run on the same model_dir fails at once with lock.LockError. `stop`: an
  interrupts.StopRequest whose signal ends the run after the train step that is running,
  with interrupts.Interrupted (trainer/main.py installs one; default: one no signal sets).
  """
  started = time.time()
  info = load_data(config, strategy)
  # Before anything is built or written: --cache=memory that cannot fit stops here.
  caches = plan_caches(config, info, strategy)
  if config.data_service:
    # Fails within --worker_timeout, instead of the first step waiting for ever.
    data_service.check(config.data_service, config.worker_timeout)
  dirs = workdir.RunDirs(config.model_dir, chief=strategy_lib.is_chief(strategy),
                         worker_index=strategy_lib.worker_index(strategy))
  try:
    tf.io.gfile.makedirs(config.model_dir)
  except (tf.errors.OpError, OSError) as e:
    raise workdir.WriteError(f"cannot create --model_dir={config.model_dir}: "
                             f"{getattr(e, 'message', None) or e}") from None
  run_lock = lock_lib.acquire(config.model_dir) if dirs.chief else None
  try:
    return _train_and_evaluate(config, strategy, info, caches, dirs, started,
                               stop or interrupts.StopRequest())
  finally:
    if run_lock is not None:
      run_lock.release()


def _train_and_evaluate(config, strategy, info, caches, dirs, started, stop):
  logging.info("this process writes into %s", dirs.write_root)
  model, optimizers, state = build(config, info, strategy)
  checkpoints = checkpoints_lib.Checkpoints(dirs, model, optimizers, state)
  resumed_from = checkpoints.restore_latest()
  # Only now are the flags known to fit this model_dir (its checkpoint restored into the
  # model they build): a run refused above leaves the previous run's flags.txt as it was.
  for name, before, after in workdir.write_flags(dirs, config):
    logging.warning("flags.txt: --%s=%s (previous run: %s)", name, after,
                    "not set" if before is None else before)
  if config.init_from and not resumed_from:
    copied = models.init_from(model, config.init_from)
    logging.info("--init_from=%s: copied the weights of %d layers (all but the head)",
                 config.init_from, copied)
  first_epoch = int(state.epoch)
  history = workdir.read_history(config.model_dir, up_to_epoch=first_epoch) if dirs.chief \
      else []
  if resumed_from:
    logging.info("resuming from %s: %d epochs done, best epoch %d (val_loss %.4f)",
                 resumed_from, first_epoch, int(state.best_epoch), float(state.best_val_loss))

  steps = train_steps_per_epoch(info, config)
  train_iterator = iter(distributed_train_data(strategy, info, config, first_epoch, caches))
  val_data, val_steps = distributed_eval_data(strategy, info, "validation", config, caches)
  train_steps = TrainSteps(model, optimizers, strategy, config, stop.flag)
  eval_step = steps_lib.make_eval_step(model, strategy)
  writers = workdir.summary_writers(dirs)
  # Every worker reports (into no-op writers but the chief's), so that all of them split
  # their steps into calls alike.
  reports = summaries.StepReports(writers["train"], config.summary_steps)
  # The learning_rate each stage's optimizer was built with, to tell the rate of its steps.
  rates = {"head": config.head_learning_rate,
           "main": schedules.for_optimizer(config, steps, state.lr_factor)}
  if first_epoch == 0 and config.summary_images and dirs.chief:
    write_first_batch(writers["train"], info, config)
  logging.info("training %s (%d parameters) on %d replica(s) with %s: %d steps of %d "
               "examples per epoch, %d validation steps", config.model, model.count_params(),
               strategy.num_replicas_in_sync, strategy_lib.name_of(strategy), steps,
               config.batch_size, val_steps)

  speeds = []  # (train examples, train seconds) of each epoch this process trains
  progress_mode = progress_lib.resolve(config.progress)
  while not state.should_stop(config):
    stage = stage_of(config, int(state.epoch))
    train_step = train_steps.for_epoch(int(state.epoch))
    epoch_start = time.time()
    # fn() -> the rate of the stage's last step so far (read from its optimizer's counter).
    rate_now = functools.partial(schedules.last_step_rate, rates[stage],
                                 optimizers[stage].iterations)
    reports.start_epoch(rate_now)
    try:
      with progress_lib.for_epoch(progress_mode, config.progress_seconds, int(state.epoch) + 1,
                                  config.epochs, steps, config.batch_size) as progress:
        train = steps_lib.run_steps(
            train_step, train_iterator, steps, report=reports,
            report_every=config.summary_steps, first_step=int(state.epoch) * steps,
            progress=progress)
    except steps_lib.NonFiniteLossError as e:
      stop_on_non_finite(config, strategy, checkpoints, state, model, dirs, info.class_names,
                         f"step {e.step}/{steps}: the training "
                         + (f"loss is {e.loss}" if not math.isfinite(e.loss)
                            else f"gradient norm is {e.grad_norm} (loss {e.loss:.4g})"))
    if "stopped" in train:
      raise interrupts.interrupted(stop, config.model_dir, int(state.epoch), train["stopped"],
                                   steps)
    speeds.append((train["examples"], time.time() - epoch_start))
    learning_rate = rate_now()  # this epoch's last step's, before plateau changes it
    # The validation loss is reduced over all workers, so every worker takes the same
    # early-stopping decision.
    val = steps_lib.run_steps(eval_step, iter(val_data), val_steps)
    if not math.isfinite(val["loss"]):
      stop_on_non_finite(config, strategy, checkpoints, state, model, dirs, info.class_names,
                         f"validation: the loss is {val['loss']}")
    improved = state.end_epoch(val["loss"])
    if improved:
      checkpoints.save_best(int(state.epoch))
    if config.lr_schedule == "plateau" and stage == "main":
      reduced = state.reduce_on_plateau(improved, config)
      if reduced is not None:
        logging.info("--lr_schedule=plateau: no lower val_loss for --lr_plateau_patience=%d "
                     "epochs; learning rate now %g (x%g)", config.lr_plateau_patience,
                     config.learning_rate * reduced, reduced)
    row = {"epoch": int(state.epoch), "loss": train["loss"], "accuracy": train["accuracy"],
           "val_loss": val["loss"], "val_accuracy": val["accuracy"],
           "time": round(time.time() - epoch_start, 3), "learning_rate": learning_rate}
    history.append(row)
    # history.csv before the checkpoint: a restart drops rows past the restored epoch, so
    # the file always ends at the checkpoint's epoch.
    workdir.write_history(dirs, history)
    checkpoints.save(int(state.epoch))
    report_epoch(writers, row, speeds[-1][0] / speeds[-1][1], config, state)

  test = test_best_weights(strategy, checkpoints, state, model, info, config, caches)
  summaries.write_test(writers["test"], test, int(state.best_epoch), int(state.epoch))
  workdir.export(model, dirs, info.class_names)
  results = results_record(config, strategy, info, state, test, speeds, first_epoch, started,
                           count_parameters(model.trainable_variables))
  workdir.write_confusion_matrix(dirs, info.class_names, test["confusion"])
  workdir.write_results(dirs, results)
  logging.info("test_loss %.4f test_accuracy %.4f (best epoch %d of %d)%s",
               test["loss"], test["accuracy"], results["best_epoch"], results["epochs_run"],
               ", stopped early" if results["stopped_early"] else "")
  # Workers kept in sync end with the same digest; compare it across their logs.
  logging.info("final weights sha256 %s", weights_digest(model))
  dirs.remove_worker_dir()
  return results


class NonFiniteLossError(RuntimeError):
  """Training stopped at a loss or gradient that was not finite; the message says where,
  what was kept and exported, and what to change."""


def stop_on_non_finite(config, strategy, checkpoints, state, model, dirs, class_names, what):
  """Stops the run at a non-finite loss: nothing of this epoch is saved (the last checkpoint
  and best/ stay as they were); the best weights so far, if any, are exported. Raises
  NonFiniteLossError with the one line that says so."""
  done, best = int(state.epoch), int(state.best_epoch)
  saved = f"The checkpoint of epoch {done} is kept" if done else "No epoch was saved"
  if checkpoints.has_best(best):
    steps_lib.barrier(strategy)
    checkpoints.restore_best(best)
    workdir.export(model, dirs, class_names)
    kept = (f"{saved} and the best weights (epoch {best}, val_loss "
            f"{float(state.best_val_loss):.4f}) are exported to {config.model_dir}")
  else:
    kept = f"{saved}; there are no best weights, so nothing is exported"
  hints = [f"a lower --learning_rate (now {config.learning_rate:g})"]
  if config.head_epochs:
    hints.append(f"a lower --head_learning_rate (now {config.head_learning_rate:g})")
  if config.mixed_precision:
    hints.append("--nomixed_precision")
  raise NonFiniteLossError(f"epoch {done + 1}, {what}; stopped. {kept}. Try {' or '.join(hints)}")


# --- data ----------------------------------------------------------------------------------


def load_data(config, strategy):
  """The data directory's DatasetInfo (restricted to --classes), checked against the config
  and the strategy before anything is built, so that every worker fails alike."""
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
  return info


def plan_caches(config, info, strategy):
  """The cache.CachePlan of this process (what --cache means here, with this host's memory).
  With --data_service the train split is never cached (trainer/data_service.py says why)."""
  plan = cache_lib.plan(config, info, num_workers=strategy_lib.num_workers(strategy),
                        workers_on_host=strategy_lib.workers_on_this_host(strategy))
  if config.data_service:
    if plan.train is not None:
      logging.info("--data_service: the train split streams on the service's workers, "
                   "not cached (--cache=%s applies to validation only)", config.cache)
    plan = dataclasses.replace(plan, train=None)
  return plan


def distributed_train_data(strategy, info, config, first_epoch, caches):
  """An endless distributed dataset of per-replica train batches, cached as `caches` (a
  cache.CachePlan) says.

  Its seed is derived from the epoch the run starts from, so that a resumed run does not
  replay the shuffle order (and augmentations) of the epochs it has already trained.
  """
  augment = augment_lib.AugmentConfig() if host_augmentation(config) else None
  seed = seeds.derive(config.seed, seeds.TRAIN_DATA, first_epoch)
  service_job = data_service.job_name(config.model_dir, first_epoch) \
      if config.data_service else None

  def dataset_fn(input_context):
    pipeline, pipelines = input_context.input_pipeline_id, input_context.num_input_pipelines
    if service_job:
      logging.info("input pipeline %d of %d reads its train batches from the tf.data "
                   "service at %s (job %s, %s)", pipeline, pipelines, config.data_service,
                   service_job, data_service.PROCESSING_MODE)
    else:
      # The files input_pipeline.train_dataset reads (files[id::n]), said once per worker
      # so that a cluster's logs show who reads what.
      logging.info("input pipeline %d of %d reads train shards %s", pipeline, pipelines,
                   list(info.split("train").shards[pipeline::pipelines]))
    ds = input_pipeline.train_dataset(
        info, batch_size=input_context.get_per_replica_batch_size(config.batch_size),
        input_context=input_context, seed=seed, augment=augment, cache=caches.train,
        image_size=config.image_size or None, deterministic=config.deterministic,
        shuffle_buffer=caches.shuffle_buffer, service_job=bool(service_job))
    if service_job:
      ds = data_service.distribute(ds, config.data_service, service_job)
      ds = ds.prefetch(input_pipeline.AUTOTUNE)
    return ds

  return strategy.distribute_datasets_from_function(dataset_fn)


def distributed_eval_data(strategy, info, split, config, caches):
  """(distributed dataset, global steps for one pass over `split`), cached as `caches` says
  (the test split, read once, never)."""
  steps = []

  def dataset_fn(input_context):
    ds, n = input_pipeline.eval_dataset(
        info, split, batch_size=input_context.get_per_replica_batch_size(config.batch_size),
        input_context=input_context, image_size=config.image_size or None,
        cache=caches.for_split(split))
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


# --- model and stages ----------------------------------------------------------------------


def build(config, info, strategy):
  """Model, optimizers and loop state, with their variables created under the strategy.

  Returns (model, optimizers, state); optimizers maps each training stage ("head" when
  --head_epochs is set, and "main") to its optimizer, built on the variables it trains.
  """
  keras.utils.set_random_seed(config.seed)  # same initial weights for the same seed
  if config.deterministic:
    tf.config.experimental.enable_op_determinism()
  policy = optimizers_lib.dtype_policy(config.mixed_precision, strategy)
  loss_scaling = optimizers_lib.needs_loss_scaling(policy)
  optimizers = {}
  # Plain host variables, outside the scope: every worker updates its own copy from the same
  # all-reduced numbers, so the copies agree without mirroring. (First: plateau's factor is
  # part of the main optimizer's learning rate.)
  state = checkpoints_lib.LoopState(plateau=config.lr_schedule == "plateau")
  with strategy.scope():
    model = models.build(config.model, info.num_classes, config.image_shape(info.image_shape),
                         dtype_policy=policy, weights=config.weights)
    # Create each optimizer's slots now, for the variables its stage trains, so that a
    # restore fills them instead of deferring.
    if config.head_epochs:
      models.set_trainable(model, 0)
      optimizers["head"] = optimizers_lib.make_optimizer(
          config.optimizer, config.head_learning_rate, loss_scaling=loss_scaling)
      optimizers["head"].build(model.trainable_variables)
    models.set_trainable(model, config_lib.trainable_layers(config),
                         config_lib.freeze_batchnorm(config))
    optimizers["main"] = optimizers_lib.make_optimizer(
        config.optimizer,
        schedules.for_optimizer(config, train_steps_per_epoch(info, config), state.lr_factor),
        loss_scaling=loss_scaling)
    optimizers["main"].build(model.trainable_variables)
  return model, optimizers, state


STAGES = ("main", "head")  # index = the stage's id in seeds.DEVICE_AUGMENT


def stage_of(config, epochs_done):
  """The training stage of the next epoch: "head" (base frozen) or "main"."""
  return "head" if epochs_done < config.head_epochs else "main"


class TrainSteps:
  """The train step of each stage, made when first needed; switching stage sets which
  layers train (the two stages' steps update different variables)."""

  def __init__(self, model, optimizers, strategy, config, stop_flag=None):
    self.model, self.optimizers, self.strategy, self.config = model, optimizers, strategy, config
    self.stop_flag = stop_flag
    self.steps = {}
    self.stage = None

  def for_epoch(self, epochs_done):
    stage = stage_of(self.config, epochs_done)
    if stage != self.stage:
      layers = 0 if stage == "head" else config_lib.trainable_layers(self.config)
      frozen_bn = layers != 0 and config_lib.freeze_batchnorm(self.config)
      trained = models.set_trainable(self.model, layers, frozen_bn)
      logging.info("stage %s: %d of %d base layers train%s (%d trainable parameters), "
                   "learning rate %g", stage, trained, len(models.base_layers(self.model)),
                   ", BatchNorm frozen" if frozen_bn else "",
                   count_parameters(self.model.trainable_variables),
                   self.config.head_learning_rate if stage == "head"
                   else self.config.learning_rate)
      self.stage = stage
    if stage not in self.steps:
      self.steps[stage] = steps_lib.make_train_step(
          self.model, self.optimizers[stage], self.strategy, self.config.batch_size,
          augment=device_augmentation(self.config), stop_flag=self.stop_flag,
          # Each stage's optimizer counts its steps from 0: a stream of its own per stage.
          seed=seeds.derive(self.config.seed, seeds.DEVICE_AUGMENT, STAGES.index(stage)))
    return self.steps[stage]


def count_parameters(variables):
  return int(sum(v.shape.num_elements() for v in variables))


def weights_digest(model):
  """sha256 over the bytes of every weight of `model` (this worker's copy)."""
  digest = hashlib.sha256()
  for weight in model.weights:
    digest.update(keras.ops.convert_to_numpy(weight).tobytes())
  return digest.hexdigest()


# --- reporting -----------------------------------------------------------------------------


def write_first_batch(writer, info, config):
  """TensorBoard images of a first train batch, augmented as training augments them, from a
  pipeline of its own (the chief's; the training stream is not touched, so the run trains
  on the same batches with or without images)."""
  count = config.summary_images
  host = augment_lib.AugmentConfig() if host_augmentation(config) else None
  ds = input_pipeline.train_dataset(info, batch_size=count, seed=config.seed, augment=host,
                                    cache=None, image_size=config.image_size or None,
                                    shuffle_buffer=1)  # no buffer to fill: the first files'
  images, _ = next(iter(ds))
  augment = device_augmentation(config)
  if augment is not None:
    seed = seeds.derive(config.seed, seeds.SUMMARY_IMAGES)
    images = augment_lib.augment_batch(images, augment, seed=tf.constant([seed, 0], tf.int64))
  summaries.write_images(writer, images, count)


def report_epoch(writers, row, examples_per_s, config, state):
  """TensorBoard scalars and the console line of one epoch."""
  workdir.write_scalars(writers["train"], row["epoch"], {
      "loss": row["loss"], "accuracy": row["accuracy"], "examples_per_s": examples_per_s,
      "learning_rate": row["learning_rate"]})
  workdir.write_scalars(writers["validation"], row["epoch"],
                        {"loss": row["val_loss"], "accuracy": row["val_accuracy"]})
  logging.info(
      "epoch %d/%d: loss %.4f accuracy %.4f | val_loss %.4f val_accuracy %.4f | %.1f s, "
      "%.0f examples/s | learning rate %.3g | best epoch %d, %d/%d epochs without "
      "improvement", row["epoch"], config.epochs, row["loss"], row["accuracy"],
      row["val_loss"], row["val_accuracy"], row["time"], examples_per_s,
      row["learning_rate"], int(state.best_epoch),
      int(state.epochs_since_best), config.patience)


def test_best_weights(strategy, checkpoints, state, model, info, config, caches):
  """Loads the best weights into the model and evaluates them on the test split, with the
  confusion matrix."""
  steps_lib.barrier(strategy)  # the chief's last best/ save is complete before anyone reads it
  checkpoints.restore_best(int(state.best_epoch))
  test_data, test_steps = distributed_eval_data(strategy, info, "test", config, caches)
  eval_step = steps_lib.make_eval_step(model, strategy, num_classes=info.num_classes)
  return steps_lib.run_steps(eval_step, iter(test_data), test_steps)


def results_record(config, strategy, info, state, test, speeds, first_epoch, started,
                   trainable_parameters):
  """results.json's fields (workdir.RESULTS_FIELDS)."""
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
      "stopped_early": state.stopped_early(config),
      "examples_per_s": sum(n for n, _ in steady) / seconds if seconds else None,
      "wall_time_s": round(time.time() - started, 3),
      "num_replicas": strategy.num_replicas_in_sync,
      "strategy": strategy_lib.name_of(strategy),
      "model": config.model,
      "trainable_parameters": trainable_parameters,
      "global_batch_size": config.batch_size,
      "dtype_policy": optimizers_lib.dtype_policy(config.mixed_precision, strategy),
      "class_names": list(info.class_names),
  }


if __name__ == "__main__":
  # `python -m trainer.train` was the entry point before trainer/main.py: keep it working.
  # (runpy, not an import: trainer.main imports this module, and Bazel deps have no cycles.)
  import runpy  # pylint: disable=g-import-not-at-top
  runpy.run_module("trainer.main", run_name="__main__", alter_sys=True)
