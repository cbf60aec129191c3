"""The frozen record of one training run's settings, its checks, and its flagfile form.

Field names are the command-line flag names (trainer/main.py defines one flag per field),
so an error can name the flag to change and trainer/workdir.py can write flags.txt, a file
that `--flagfile=` reads back. This module imports no TensorFlow: it is plain data.
"""

import dataclasses
import urllib.parse

from pipeline import splits

OPTIMIZERS = ("adam", "sgd", "rmsprop")
AUGMENT_ON = ("host", "device")
LR_SCHEDULES = ("constant", "cosine", "step", "plateau")  # trainer/schedules.py
PROGRESS = ("auto", "bar", "lines")  # trainer/progress.py
BATCHNORM = ("auto", "frozen", "train")  # freeze_batchnorm


class ConfigError(ValueError):
  """A setting is invalid; the message names the flag."""


@dataclasses.dataclass(frozen=True)
class Config:
  data_dir: str
  model_dir: str
  model: str = "simple"
  batch_size: int = 128  # global: summed over all replicas and workers
  optimizer: str = "adam"
  learning_rate: float = 1e-4
  epochs: int = 500  # at most; early stopping usually ends the run sooner
  patience: int = 25  # epochs without a lower validation loss before stopping
  augment: bool = True
  strategy: str = "auto"
  cpu_replicas: int = 1  # logical CPU devices, so MirroredStrategy runs without GPUs
  mixed_precision: bool = False
  seed: int = 0
  # Same seed, same run: tf.data keeps a fixed order in every parallel stage and TensorFlow
  # picks deterministic kernels (tf.config.experimental.enable_op_determinism; on a GPU some
  # are slower, and ops without one raise an error). For debugging and exact comparisons.
  # A resumed run draws its shuffles from a seed moved on by the epoch it resumes at, so it
  # does not repeat an uninterrupted run.
  deterministic: bool = False
  # auto | memory | none | a file path prefix: which splits are cached where (trainer/cache.py).
  # auto caches in memory what fits this process's memory budget and streams the rest.
  cache: str = "auto"
  image_size: int = 0  # resize to image_size x image_size pixels; 0 keeps the stored size
  steps_per_epoch: int = 0  # cap on train steps per epoch; 0 means one pass over train
  # Multi-worker only: seconds to wait for the other workers, when connecting and in each
  # collective (so a lost worker ends the run with an error, not a hang); 0 waits forever.
  worker_timeout: int = 600
  # Read every shard once before training (CRCs, counts, labels; no decoding) so that a
  # corrupt or mismatched data dir fails by name up front, not mid-epoch inside tf.data.
  # About 2 s for CIFAR-10's 60,000 records; turn off for very large remote datasets.
  verify_data: bool = True
  # Where augmentation runs: "host" in tf.data, or "device" inside the train step (the host
  # then only decodes; on a GPU the step absorbs the resampling, which costs a 2-core host
  # a fifth of its time for `simple`).
  augment_on: str = "host"
  # Train on a subset of the data's classes: "" all; "N" the first N of a permutation of
  # the classes seeded by --seed (pipeline.splits.seeded_classes, the rule of the Beam job's
  # --num_classes=N --class_seed=S too; so 2 of them are among 5, 5 among 10); "cat,dog,..."
  # those classes by name, labelled in the order given.
  classes: str = ""
  # Transfer learning (Keras applications models; trainer/models.py).
  weights: str = "none"  # "none", "imagenet", or a path to a weights file for the base
  # Which layers of the base network train: "all", "none" (only the new head), or N (the
  # last N layers of the base). BatchNorm layers that do not train run in inference mode.
  trainable_layers: str = "all"
  # The base's BatchNorm layers while their layers train: "frozen" (inference mode: their
  # statistics and scale are kept), "train", or "auto" (frozen with pretrained --weights).
  batchnorm: str = "auto"
  # Two-stage schedule: the first head_epochs epochs train only the head, at
  # head_learning_rate; then --trainable_layers train at --learning_rate. 0 = one stage.
  head_epochs: int = 0
  head_learning_rate: float = 1e-3
  # Start from another run's exported best weights (its model.keras): every layer but the
  # classification head. Ignored when --model_dir already holds a checkpoint to resume.
  init_from: str = ""
  # Learning-rate schedule of the main stage (trainer/schedules.py; the --head_epochs stage
  # stays at head_learning_rate): constant | cosine (per step, down to lr_final_fraction of
  # learning_rate at the last of the main stage's epochs) | step (times lr_step_factor every
  # lr_step_epochs epochs) | plateau (times lr_plateau_factor after lr_plateau_patience epochs
  # without a lower validation loss).
  lr_schedule: str = "constant"
  warmup_epochs: float = 0.0  # epochs (fractions allowed) of linear ramp from ~0 to the rate
  lr_final_fraction: float = 0.0  # cosine: the last step's rate, as a fraction of learning_rate
  lr_step_epochs: int = 30  # step: epochs between drops
  lr_step_factor: float = 0.1  # step: multiplier at each drop
  lr_plateau_factor: float = 0.1  # plateau: multiplier at each reduction
  lr_plateau_patience: int = 10  # plateau: epochs without a lower val_loss before reducing
  # TensorBoard (trainer/summaries.py): train loss, accuracy, learning rate and examples/s
  # every summary_steps train steps (0 = only per epoch), and summary_images augmented
  # images of a first train batch when a run starts (0 = none; read apart from the training
  # stream, which it does not change).
  summary_steps: int = 100
  summary_images: int = 8
  # grpc://HOST:PORT of a tf.data service dispatcher: the train input pipeline runs on its
  # workers (trainer/data_service.py); "" = on this host.
  data_service: str = ""
  # Progress inside an epoch (trainer/progress.py): "bar" redrawn in place, "lines" (one
  # every progress_seconds; 0 = only the end-of-epoch line), "auto" = bar on a terminal.
  progress: str = "auto"
  progress_seconds: float = 30.0

  def image_shape(self, stored_shape):
    """The model's input shape given the data's stored (H, W, C), or None if unknown."""
    if self.image_size:
      channels = stored_shape[2] if stored_shape else 3
      return (self.image_size, self.image_size, channels)
    return tuple(stored_shape) if stored_shape else None


def validate(config, *, model_names=None):
  """Checks settings that need no data; raises ConfigError naming the flag."""
  c = config
  if not c.data_dir:
    raise ConfigError("--data_dir is required (a directory written by pipeline.build_tfrecords)")
  if not c.model_dir:
    raise ConfigError("--model_dir is required (where checkpoints and results go)")
  if model_names is not None and c.model not in model_names:
    raise ConfigError(f"--model={c.model}: unknown model; choose one of "
                      f"{', '.join(sorted(model_names))}")
  if c.optimizer not in OPTIMIZERS:
    raise ConfigError(f"--optimizer={c.optimizer}: choose one of {', '.join(OPTIMIZERS)}")
  positive = {"batch_size": c.batch_size, "epochs": c.epochs, "patience": c.patience,
              "cpu_replicas": c.cpu_replicas}
  for name, value in positive.items():
    if value < 1:
      raise ConfigError(f"--{name}={value}: must be at least 1")
  if not c.learning_rate >= 0:  # Also rejects NaN.
    raise ConfigError(f"--learning_rate={c.learning_rate}: must be >= 0")
  if c.augment_on not in AUGMENT_ON:
    raise ConfigError(f"--augment_on={c.augment_on}: choose one of {', '.join(AUGMENT_ON)}")
  trainable_layers(c)  # raises on a bad value
  if c.batchnorm not in BATCHNORM:
    raise ConfigError(f"--batchnorm={c.batchnorm}: choose one of {', '.join(BATCHNORM)}")
  if not c.head_learning_rate >= 0:
    raise ConfigError(f"--head_learning_rate={c.head_learning_rate}: must be >= 0")
  if c.head_epochs and trainable_layers(c) == 0:
    raise ConfigError(f"--head_epochs={c.head_epochs} with --trainable_layers=none: the "
                      "second stage would train the head only too; set --trainable_layers "
                      "to all or N, or --head_epochs=0")
  if c.classes.strip().isdigit() and int(c.classes) < 2:
    raise ConfigError(f"--classes={c.classes}: need at least 2 classes to classify")
  if c.data_service:
    try:
      data_service_address(c.data_service)
    except ValueError as e:
      raise ConfigError(f"--data_service: {e}") from None
  for name in ("image_size", "steps_per_epoch", "worker_timeout", "head_epochs",
               "summary_steps", "summary_images", "progress_seconds"):
    if getattr(c, name) < 0:
      raise ConfigError(f"--{name}={getattr(c, name)}: must be >= 0 (0 = off)")
  if c.progress not in PROGRESS:
    raise ConfigError(f"--progress={c.progress}: choose one of {', '.join(PROGRESS)}")
  validate_schedule(c)


def validate_schedule(config):
  """Checks the --lr_schedule settings; raises ConfigError naming the flag."""
  c = config
  if c.lr_schedule not in LR_SCHEDULES:
    raise ConfigError(f"--lr_schedule={c.lr_schedule}: choose one of {', '.join(LR_SCHEDULES)}")
  if not 0 <= c.warmup_epochs < float("inf"):
    raise ConfigError(f"--warmup_epochs={c.warmup_epochs}: must be >= 0 (0 = no warmup)")
  if not 0 <= c.lr_final_fraction <= 1:
    raise ConfigError(f"--lr_final_fraction={c.lr_final_fraction}: must be in [0, 1]")
  for name in ("lr_step_factor", "lr_plateau_factor"):
    if not 0 < getattr(c, name) <= 1:
      raise ConfigError(f"--{name}={getattr(c, name)}: must be in (0, 1]")
  for name in ("lr_step_epochs", "lr_plateau_patience"):
    if getattr(c, name) < 1:
      raise ConfigError(f"--{name}={getattr(c, name)}: must be at least 1")
  main_epochs = c.epochs - c.head_epochs
  if c.lr_schedule == "cosine" and c.warmup_epochs >= main_epochs:
    raise ConfigError(f"--warmup_epochs={c.warmup_epochs:g}: --lr_schedule=cosine needs "
                      f"epochs after the warmup, but the main stage has {main_epochs} "
                      "(--epochs minus --head_epochs)")
  if c.lr_schedule == "plateau" and c.lr_plateau_patience >= c.patience:
    raise ConfigError(f"--lr_plateau_patience={c.lr_plateau_patience} must be below "
                      f"--patience={c.patience}: early stopping would end the run before "
                      "the rate is reduced")


def data_service_address(address):
  """grpc://HOST:PORT -> (host, port); ValueError naming the address if malformed.
  (trainer/data_service.py uses it too; here because this module imports no TensorFlow.)"""
  parsed = urllib.parse.urlparse(address)
  try:
    port = parsed.port
  except ValueError:
    port = None
  if parsed.scheme != "grpc" or not parsed.hostname or not port or parsed.path not in ("", "/"):
    raise ValueError(f"{address!r} is not a tf.data service dispatcher address; use "
                     "grpc://HOST:PORT (what tools.launch_data_service prints)")
  return parsed.hostname, port


def freeze_batchnorm(config):
  """Whether the base's BatchNorm layers stay frozen (inference mode) while the layers around
  them train: --batchnorm=frozen, or auto with pretrained --weights (imagenet or a file).

  Why auto freezes them under pretrained weights: the Keras applications' BatchNorm layers
  update their moving statistics with momentum 0.999, so a fine-tuning of a few hundred steps
  moves them a fifth of the way from ImageNet's towards the new data's, while the weights
  around them learn from the batches' own statistics; evaluated on the moving ones, the
  network is then worse than before fine-tuning (EXPERIMENTS.md, "Transfer with ImageNet
  weights": MobileNetV2 at 32 px, validation accuracy 0.44 after the head epoch, 0.37 after
  two short epochs of all layers; 0.53 with momentum 0.9; 0.64 with BatchNorm frozen). From
  scratch (--weights=none) or with --init_from, they train.
  """
  if config.batchnorm == "auto":
    return config.weights.strip().lower() not in ("", "none")
  return config.batchnorm == "frozen"


def trainable_layers(config):
  """--trainable_layers as None (all layers), 0 (none) or N > 0; ConfigError if malformed."""
  value = config.trainable_layers.strip().lower()
  if value == "all":
    return None
  if value == "none":
    return 0
  if value.isdigit() and int(value) > 0:
    return int(value)
  raise ConfigError(f"--trainable_layers={config.trainable_layers}: use all, none, or a "
                    "positive number of layers (the last N layers of the base network)")


def class_subset(config, class_names):
  """The class indices --classes selects, in their new label order, or None for all.

  Raises ConfigError naming an unknown class or a count the data cannot provide.
  """
  value = config.classes.strip()
  if not value:
    return None
  if value.isdigit():
    n = int(value)
    if n > len(class_names):
      raise ConfigError(f"--classes={n}: the data has only {len(class_names)} classes")
    return tuple(splits.seeded_classes(len(class_names), n, config.seed))
  names = [n.strip() for n in value.split(",") if n.strip()]
  unknown = [n for n in names if n not in class_names]
  if unknown:
    raise ConfigError(f"--classes: unknown class(es) {', '.join(unknown)}; the data has "
                      f"{', '.join(class_names)}")
  if len(set(names)) != len(names):
    raise ConfigError(f"--classes={value}: a class is named twice")
  if len(names) < 2:
    raise ConfigError(f"--classes={value}: need at least 2 classes to classify")
  return tuple(class_names.index(n) for n in names)


def check_against_data(config, info, num_replicas, num_workers=1):
  """Checks settings against the data directory's DatasetInfo and the replica and worker
  counts (before any step runs, so that every worker fails alike instead of some hanging)."""
  c = config
  train = info.split("train").num_examples
  shards = len(info.split("train").shards)
  if num_workers > 1 and shards < num_workers and not c.data_service:
    # Each worker reads whole train files (files[worker::num_workers]).
    raise ConfigError(f"--data_dir={c.data_dir} has {shards} train shard file(s) for "
                      f"{num_workers} workers; each worker reads its own files, so rebuild "
                      f"the data with --num_shards={num_workers} or more (ideally 10x the "
                      "workers) or run fewer workers")
  if c.batch_size > train:
    raise ConfigError(f"--batch_size={c.batch_size} is larger than the train split "
                      f"({train} examples in {c.data_dir})")
  if c.batch_size % num_replicas:
    raise ConfigError(f"--batch_size={c.batch_size} (global) must be divisible by the "
                      f"number of replicas, {num_replicas}")
  for split in ("validation", "test"):
    if info.split(split).num_examples == 0:
      raise ConfigError(f"--data_dir={c.data_dir}: the {split} split is empty; early stopping "
                        "and the final evaluation need it")
  if c.image_shape(info.image_shape) is None:
    raise ConfigError(f"--image_size is required: the images in {c.data_dir} differ in size")
