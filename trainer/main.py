r"""Trains an image classifier on a TFRecord data directory written by pipeline.build_tfrecords.

  python -m trainer.main --data_dir=DATA --model_dir=RUN [--model=basic] [--strategy=mirrored]
  python -m trainer.main --flagfile=configs/basic.flags --data_dir=DATA --model_dir=RUN
  python -m trainer.main --flagfile=RUN/flags.txt      # reruns (or resumes) a run

Rerunning the same command resumes from the last checkpoint in --model_dir. Results land in
--model_dir (results.json, history.csv, model.keras, saved_model/, tensorboard/; see
trainer/workdir.py). This is the only training module that defines flags (trainer.evaluate
and trainer.predict have their own); it builds the strategy and calls
trainer.train.train_and_evaluate. `python -m trainer.train` is the same command.

It prints its own lines (the cache decision, each epoch, the test result, where the results
and the model went); TensorFlow's and absl's internal INFO lines only with --verbosity=1,
which shows debug lines too (pipeline/logs.py). Warnings and errors always show.

Exit status: 0 trained (or already finished); 1 a mistake in the flags or the data, or a run
state that stops it (one line `trainer.main: error: ...`, naming the flag or path); 130 or 143
stopped by SIGINT or SIGTERM (128 + the signal) at the next train step, that epoch abandoned
and the last epoch's checkpoint kept (rerunning resumes from it). docs/cli.md has
every command's.
"""

import dataclasses
import sys

from absl import app
from absl import flags
from absl import logging

from pipeline import command_line
from pipeline import logs
# Before TensorFlow loads: its C++ start-up notices are held back unless --verbosity=1.
logs.import_tensorflow(logs.verbose_in_argv(sys.argv))
import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position

from pipeline import dataset_info
from trainer import checkpoints
from trainer import config as config_lib
from trainer import data_service
from trainer import interrupts
from trainer import lock
from trainer import models
from trainer import strategy as strategy_lib
from trainer import train
from trainer import workdir

NAME = "trainer.main"  # as typed after `python -m`: the prefix of its error lines
_DEFAULTS = config_lib.Config(data_dir="", model_dir="")


# Each Config field's flag help, in Config's order (trainer/config.py has the units).
HELP = {
    "data_dir": "Data directory with tfrecords_info.json (local or gs://).",
    "model_dir": (
        "Where checkpoints, results and the exported model go. Rerunning with the same "
        "--model_dir resumes."),
    "model": (
        "Model to train: the report's simple and basic CNNs, or a Keras application "
        "(ImageNet architecture) with a new classification head."),
    "batch_size": "Global batch size (over all replicas and workers).",
    "optimizer": "Optimizer.",
    "learning_rate": "Learning rate.",
    "epochs": "Maximum number of epochs.",
    "patience": "Stop after this many epochs without a lower validation loss.",
    "augment": "Random flips, rotations, zooms and shifts of the training images.",
    "strategy": "tf.distribute strategy; multi_worker reads the cluster from TF_CONFIG.",
    "cpu_replicas": (
        "Split the CPU into this many logical devices so that mirrored training runs "
        "without GPUs."),
    "mixed_precision": "mixed_float16 with loss scaling on GPU, mixed_bfloat16 on CPU.",
    "seed": (
        "Seed for weights, shuffling and augmentation. Runs are not bit-identical unless "
        "--deterministic: training shards are read in parallel, in the order they arrive; "
        "two runs with one seed differ by about 0.01-0.02 test accuracy after 10 epochs "
        "(EXPERIMENTS.md)."),
    "deterministic": (
        "Bit-identical runs for one --seed, machine and strategy: the input keeps a fixed "
        "order in every parallel stage (as fast on the host: BENCHMARKS.md) and "
        "TensorFlow uses deterministic kernels (on a GPU some are slower, and an op "
        "without one fails with an error naming it)."),
    "cache": (
        "Where decoded train and validation images are cached: auto (in memory what fits "
        "half of what this process can still use under its cgroup limit or the RAM; the "
        "rest streams from the shards every epoch), memory (stops before training when "
        "that budget cannot hold them), none (always stream), or a file path prefix. The "
        "test split is read once and never cached."),
    "image_size": (
        "Resize images to this many pixels square (e.g. 96 or 224 for the applications); "
        "0 keeps the stored size. Images are cached at the smaller of the stored and this "
        "size: resized before the cache when smaller, per batch after it when larger."),
    "steps_per_epoch": "Cap on training steps per epoch (smoke runs); 0 = one pass over train.",
    "worker_timeout": (
        "--strategy=multi_worker: seconds a worker waits for the others, to connect and "
        "in each all-reduce, before it fails with an error; --data_service: seconds to wait "
        "at start for the dispatcher and a worker to serve; 0 waits forever."),
    "verify_data": (
        "Read every shard once before training, 8 at a time (CRCs, record counts, labels) "
        "so that a corrupt or mismatched --data_dir fails by name. It costs about 15 s per "
        "GB of 224-px records and 5-10 s for CIFAR-10's 60,000 on 2 busy cores "
        "(BENCHMARKS.md); --noverify_data skips it for very large datasets."),
    "augment_on": (
        "Where --augment runs: host (in tf.data, overlapping the step) or device (inside "
        "the train step, so that a GPU does it and the host only decodes)."),
    "classes": (
        "Train on a subset of the data's classes: empty for all; N for N classes picked "
        "by --seed (nested: the 2 of N=2 are among the 5 of N=5); or comma-separated "
        "class names."),
    "weights": (
        "Applications only: initial weights of the base network: none (random), imagenet "
        "(downloaded by Keras), or the path of a weights file (e.g. Keras' ..._notop.h5 "
        "copied to this machine, or torchvision's weights converted by "
        "tools.import_weights: the model then normalises its input as torchvision's)."),
    "trainable_layers": (
        "Which layers of the base network train: all, none (only the new head) or N (the "
        "last N layers). For simple/basic the base is every layer but the last. Frozen "
        "BatchNorm layers run in inference mode."),
    "batchnorm": (
        "The base's BatchNorm layers while --trainable_layers train: frozen (inference "
        "mode, the pretrained statistics and scale kept), train, or auto: frozen with "
        "pretrained --weights (their statistics move too slowly to follow a short "
        "fine-tuning: EXPERIMENTS.md), train otherwise."),
    "head_epochs": (
        "Two-stage fine-tuning: train only the head for this many epochs at "
        "--head_learning_rate, then --trainable_layers at --learning_rate (set it lower). "
        "0 = one stage."),
    "head_learning_rate": "Learning rate of the --head_epochs stage.",
    "init_from": (
        "A finished run's --model_dir: start from its best weights (model.keras), all "
        "layers but the classification head. Same --model; the classes may differ."),
    "lr_schedule": (
        "Learning-rate schedule of the main stage (after any --head_epochs, which stay at "
        "--head_learning_rate): constant; cosine (per step, from --learning_rate to "
        "--lr_final_fraction of it at the last of --epochs); step (times --lr_step_factor "
        "every --lr_step_epochs epochs); plateau (times --lr_plateau_factor after "
        "--lr_plateau_patience epochs without a lower validation loss). Resumed runs "
        "continue it; history.csv's learning_rate column has the rate of each epoch's "
        "last step."),
    "warmup_epochs": (
        "Epochs (fractions allowed) over which the rate ramps up linearly, per step, at "
        "the start of the main stage; 0 = none."),
    "lr_final_fraction": "--lr_schedule=cosine: the last step's rate, as a fraction of "
                         "--learning_rate (0-1).",
    "lr_step_epochs": "--lr_schedule=step: epochs between drops.",
    "lr_step_factor": "--lr_schedule=step: multiplier of the rate at each drop (0-1].",
    "lr_plateau_factor": "--lr_schedule=plateau: multiplier of the rate at each reduction "
                         "(0-1].",
    "lr_plateau_patience": (
        "--lr_schedule=plateau: epochs without a lower validation loss before the rate is "
        "reduced (below --patience)."),
    "summary_steps": (
        "TensorBoard: write train loss, accuracy, learning rate and examples/s every this "
        "many train steps (counted over the whole run, both stages; chief only), besides "
        "the per-epoch scalars; 0 = per epoch only."),
    "summary_images": (
        "TensorBoard: this many training images, after augmentation, when "
        "a run starts (read apart from the training stream); 0 = none."),
    "data_service": (
        "grpc://HOST:PORT of a tf.data service dispatcher (python -m "
        "tools.launch_data_service prints one): the train input (read, decode, shuffle, "
        "augment, batch) runs on its workers, one shared job per run, each example once per "
        "pass (distributed_epoch); validation and test stay here. Empty: all input on this "
        "host."),
    "progress": (
        "Progress inside an epoch: bar (redrawn in place: steps, examples/s, ETA, loss, "
        "accuracy), lines (a log line every --progress_seconds, for logs and pipes), auto "
        "(bar when stderr is a terminal, else lines)."),
    "progress_seconds": (
        "With lines progress: a line every this many seconds inside an epoch with the "
        "steps done, examples/s, the epoch's ETA, loss and accuracy; 0 = only the line at "
        "the end of each epoch."),
}


# Flags whose value is one of a list (the rest take any value of their field's type).
CHOICES = {
    "model": list(models.MODELS),
    "optimizer": list(config_lib.OPTIMIZERS),
    "augment_on": list(config_lib.AUGMENT_ON),
    "lr_schedule": list(config_lib.LR_SCHEDULES),
    "strategy": list(strategy_lib.STRATEGIES),
    "progress": list(config_lib.PROGRESS),
    "batchnorm": list(config_lib.BATCHNORM),
}
CASE_INSENSITIVE = ("model",)  # --model=resnet50 means ResNet50
REQUIRED = ("data_dir", "model_dir")  # no default (config.validate names them when missing)
_DEFINE = {bool: flags.DEFINE_boolean, int: flags.DEFINE_integer, float: flags.DEFINE_float,
           str: flags.DEFINE_string}


def define_flags(flag_values=flags.FLAGS):
  """Defines the trainer's flags, one per Config field (its default, type and HELP), in
  `flag_values`.

  Called when the module runs, not when it is imported: importing it (tests, tools) then
  claims no names in absl's global registry, which the Beam job's flags share (it has an
  --image_size too).
  """
  for field in dataclasses.fields(config_lib.Config):
    name = field.name
    default = None if name in REQUIRED else getattr(_DEFAULTS, name)
    if name in CHOICES:
      flags.DEFINE_enum(name, default, CHOICES[name], HELP[name],
                        case_sensitive=name not in CASE_INSENSITIVE, flag_values=flag_values)
    else:
      _DEFINE[field.type](name, default, HELP[name], flag_values=flag_values)
  # config.validate checks them, with a message that says what they should be.
  command_line.mark_required(REQUIRED, flag_values, validate=False)


def config_from_flags(flag_values=flags.FLAGS):
  names = [f.name for f in dataclasses.fields(config_lib.Config)]
  return config_lib.Config(**{name: flag_values[name].value for name in names})


def main(argv):
  if len(argv) > 1:
    command_line.fail(NAME, f"unexpected arguments: {' '.join(argv[1:])}")
  logs.configure(verbose=logging.level_debug())
  config = config_from_flags()
  try:
    config_lib.validate(config, model_names=models.MODELS)
    # The first TensorFlow call: splitting the CPU into replicas must precede every op.
    strategy = strategy_lib.make_strategy(config.strategy, config.cpu_replicas,
                                          worker_timeout=config.worker_timeout)
    # After the strategy (its flag is a TensorFlow variable): from here SIGINT and SIGTERM
    # stop the run at the next train step, with the line below.
    stop = interrupts.StopRequest().install()
    train.train_and_evaluate(config, strategy, stop=stop)
    report_outputs(config.model_dir, strategy)
  except (config_lib.ConfigError, dataset_info.DatasetInfoError,
          strategy_lib.StrategyError, data_service.DataServiceError) as e:
    # A one-line message on stderr and exit status 1, not a traceback: these are the
    # user's settings to fix, not bugs.
    command_line.fail(NAME, e)
  except interrupts.Interrupted as e:
    print(f"{NAME}: {e}", file=sys.stderr, flush=True)
    sys.exit(e.exit_status)
  except STATE_ERRORS as e:
    # The run's state or its machine stopped it (another run holds --model_dir, corrupt
    # checkpoints, a non-finite loss, a full disk): one line, exit status 1; the traceback
    # only when --verbosity=1 (debug) asks for it.
    if logging.level_debug():
      raise
    command_line.fail(NAME, one_line(e))
  except strategy_lib.LOST_WORKER_ERRORS as e:
    if config.strategy != "multi_worker":
      raise
    # A peer died or hung: this worker cannot go on alone (every step all-reduces).
    reason = e.message.rsplit("aborted by: ", 1)[-1].strip().splitlines()
    command_line.fail(NAME, f"lost contact with another worker ({' '.join(reason[:2])}); "
                      "rerun the same command on every worker to resume from the last "
                      f"checkpoint in --model_dir={config.model_dir}")


# Errors that stop a run for a reason its message states (see main()).
STATE_ERRORS = (lock.LockError, checkpoints.CheckpointError, checkpoints.CheckpointWriteError,
                workdir.WriteError, train.NonFiniteLossError, OSError,
                # Raised by TensorFlow's file systems, e.g. "...; No space left on device".
                tf.errors.ResourceExhaustedError, tf.errors.PermissionDeniedError)


def report_outputs(model_dir, strategy):
  """The run's last lines: where its results and exported model are (the chief's; other
  workers write none)."""
  if strategy_lib.is_chief(strategy):
    logging.info("results: %s", workdir.join(model_dir, workdir.RESULTS_FILE))
    logging.info("model: %s and %s/", workdir.join(model_dir, workdir.KERAS_MODEL),
                 workdir.join(model_dir, workdir.SAVED_MODEL_DIR))


def one_line(error):
  text = getattr(error, "message", None) or str(error) or type(error).__name__
  if isinstance(error, OSError) and error.filename and error.filename not in text:
    text = f"{error.filename}: {text}"
  return " ".join(text.split())


def run():
  """The command line: defines the flags, parses them and trains."""
  define_flags()
  app.run(main, flags_parser=lambda argv: command_line.parse(NAME, argv))


if __name__ == "__main__":
  run()
