r"""Trains an image classifier on a TFRecord data directory written by pipeline.build_tfrecords.

  python -m trainer.train --data_dir=DATA --model_dir=RUN [--model=basic] [--strategy=mirrored]
  python -m trainer.train --flagfile=configs/basic.flags --data_dir=DATA --model_dir=RUN
  python -m trainer.train --flagfile=RUN/flags.txt      # reruns (or resumes) a run

Rerunning the same command resumes from the last checkpoint in --model_dir. Results land in
--model_dir (results.json, history.csv, model.keras, saved_model/, tensorboard/); see
trainer/loop.py. This is the only module that defines flags.
"""

import dataclasses
import sys

from absl import app
from absl import flags

from pipeline import dataset_info
from trainer import config as config_lib
from trainer import loop
from trainer import models
from trainer import strategy as strategy_lib

_DEFAULTS = config_lib.Config(data_dir="", model_dir="")

flags.DEFINE_string("data_dir", None, "Data directory with dataset_info.json (local or gs://).")
flags.DEFINE_string("model_dir", None, "Where checkpoints, results and the exported model go.")
flags.DEFINE_enum("model", _DEFAULTS.model, sorted(models.MODELS), "Model to train.")
flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size,
                     "Global batch size (over all replicas and workers).")
flags.DEFINE_enum("optimizer", _DEFAULTS.optimizer, config_lib.OPTIMIZERS, "Optimizer.")
flags.DEFINE_float("learning_rate", _DEFAULTS.learning_rate, "Learning rate.")
flags.DEFINE_integer("epochs", _DEFAULTS.epochs, "Maximum number of epochs.")
flags.DEFINE_integer("patience", _DEFAULTS.patience,
                     "Stop after this many epochs without a lower validation loss.")
flags.DEFINE_boolean("augment", _DEFAULTS.augment,
                     "Random flips, rotations, zooms and shifts of the training images.")
flags.DEFINE_enum("strategy", _DEFAULTS.strategy,
                  ["auto", "one_device", "mirrored", "multi_worker"],
                  "tf.distribute strategy; multi_worker reads the cluster from TF_CONFIG.")
flags.DEFINE_integer("cpu_replicas", _DEFAULTS.cpu_replicas,
                     "Split the CPU into this many logical devices so that mirrored training "
                     "runs without GPUs.")
flags.DEFINE_boolean("mixed_precision", _DEFAULTS.mixed_precision,
                     "mixed_float16 with loss scaling on GPU, mixed_bfloat16 on CPU.")
flags.DEFINE_integer("seed", _DEFAULTS.seed, "Seed for weights, shuffling and augmentation.")
flags.DEFINE_string("cache", _DEFAULTS.cache,
                    "Where decoded images are cached: empty for memory, else a file prefix.")
flags.DEFINE_integer("image_size", _DEFAULTS.image_size,
                     "Resize images to this many pixels square; 0 keeps the stored size.")
flags.DEFINE_integer("steps_per_epoch", _DEFAULTS.steps_per_epoch,
                     "Cap on training steps per epoch (smoke runs); 0 = one pass over train.")

FLAGS = flags.FLAGS


def config_from_flags():
  names = [f.name for f in dataclasses.fields(config_lib.Config)]
  return config_lib.Config(**{name: FLAGS[name].value for name in names})


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  config = config_from_flags()
  try:
    config_lib.validate(config, model_names=models.MODELS)
    # The first TensorFlow call: splitting the CPU into replicas must precede every op.
    strategy = strategy_lib.make_strategy(config.strategy, config.cpu_replicas)
    loop.train_and_evaluate(config, strategy)
  except (config_lib.ConfigError, dataset_info.DatasetInfoError,
          strategy_lib.StrategyError) as e:
    # A one-line message on stderr and exit status 1, not a traceback: these are the
    # user's settings to fix, not bugs.
    sys.exit(f"trainer.train: error: {e}")


if __name__ == "__main__":
  app.run(main)
