"""The report's own training loop, to run beside the trainer: Keras compile/fit on
ImageDataGenerator batches, early stopping and best-weights restore as Keras callbacks.

    python -m tools.reference_fit --data_dir=DATA --model_dir=runs/basic_fit --model=basic
    python -m tools.report runs/basic runs/basic_fit --output_dir=/tmp/fit_vs_trainer

The trainer (trainer.main) reproduces the report's protocol with its own pieces: a
tf.distribute train step, a tf.data pipeline that augments whole batches with one projective
transform, a shuffle buffer over cached records. When its results differ from the report's
(or from another implementation of the same protocol), this tool is the control: the same
data directory, the same splits and the same model (trainer.models.build), trained as the
report did, with

    ImageDataGenerator(horizontal_flip=True, rotation_range=15, zoom_range=0.1,
                       width_shift_range=0.1, height_shift_range=0.1)
        .flow(train images, labels, batch_size, shuffle=True, seed)   # all of them, permuted
    model.compile(Adam(--learning_rate), "sparse_categorical_crossentropy", ["accuracy"])
    model.fit(..., validation_data=(validation images, labels), epochs=--epochs,
              callbacks=[EarlyStopping("val_loss", patience=--patience,
                                       restore_best_weights=True)])

then evaluated on the test split. The images are decoded into memory once, by the trainer's
own decoder (trainer.input_pipeline.eval_dataset: the same pixels the trainer trains on),
so it is for CIFAR-sized data. `--validation_split=test` validates on the test images (as
a script that only has Keras' train/test split does) and leaves the validation split out;
with data built by `pipeline.build_tfrecords --validation_fraction=0` (no validation split,
all 50,000 CIFAR training images in train) that is Keras' own 50,000 / 10,000 protocol, the
best epoch then chosen on the test images. (TensorFlow decodes JPEG with its fast integer
IDCT: on CIFAR-10's JPEGs its pixels differ from PIL's by 1 grey level on average, 5 at
most; `dct_method="INTEGER_ACCURATE"` gives PIL's exactly.)

Writes into --model_dir what tools.report reads: history.csv (one row per epoch, the
trainer's columns) as it goes, and results.json at the end, with "strategy": "keras_fit"
(no flags.txt: the flags are not the trainer's). It does not resume: a stopped run starts
again. One progress line per epoch.

Exit status: 0 trained; 1 a mistake (a flag, no data directory): one line
`tools.reference_fit: error: ...`.
"""

import time

from absl import flags

from tools import cli

NAME = "tools.reference_fit"


def load_split(info, split, batch_size=512):
  """(uint8 [N, H, W, 3], int32 [N]) of a split, decoded by the trainer's pipeline."""
  import numpy as np
  from trainer import input_pipeline
  dataset, _ = input_pipeline.eval_dataset(info, split, batch_size=batch_size, cache=None)
  images, labels = [], []
  for batch_images, batch_labels, weights in dataset:
    real = weights.numpy() > 0  # the padding that fills the last batch has weight 0
    images.append(batch_images.numpy()[real])
    labels.append(batch_labels.numpy()[real])
  return np.concatenate(images), np.concatenate(labels).astype(np.int32)


def run(data_dir, model_dir, *, model_name="basic", epochs=500, patience=25, batch_size=128,
        learning_rate=1e-4, seed=0, validation_split="validation", log=print):
  """Trains and tests; returns results.json's dict."""
  import keras
  import tensorflow as tf
  from pipeline import dataset_info
  from tools import bench_input
  from trainer import models
  from trainer import train
  from trainer import workdir

  try:
    info = dataset_info.load(data_dir)
  except dataset_info.DatasetInfoError as e:
    raise cli.ToolError(str(e)) from None
  for split in ("train", validation_split, "test"):
    if split not in info.splits:
      raise cli.ToolError(f"--data_dir={data_dir} has no {split} split")
  started = time.time()
  x_train, y_train = load_split(info, "train")
  x_val, y_val = load_split(info, validation_split)
  x_test, y_test = (x_val, y_val) if validation_split == "test" else load_split(info, "test")
  log(f"{NAME}: {len(x_train):,} train, {len(x_val):,} {validation_split} (validation), "
      f"{len(x_test):,} test images decoded in {time.time() - started:.0f} s")

  keras.utils.set_random_seed(seed)
  model = models.build(model_name, info.num_classes, tuple(x_train.shape[1:]))
  model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                loss="sparse_categorical_crossentropy", metrics=["accuracy"])
  batches = bench_input.image_data_generator_batches(x_train, y_train, seed, batch_size)
  dirs = workdir.RunDirs(model_dir)
  tf.io.gfile.makedirs(model_dir)
  history = []

  class WriteHistory(keras.callbacks.Callback):
    """history.csv after every epoch, and a progress line."""

    def on_epoch_begin(self, epoch, logs=None):
      self.epoch_start = time.time()

    def on_epoch_end(self, epoch, logs=None):
      row = {"epoch": epoch + 1, "loss": float(logs["loss"]),
             "accuracy": float(logs["accuracy"]), "val_loss": float(logs["val_loss"]),
             "val_accuracy": float(logs["val_accuracy"]),
             "learning_rate": float(learning_rate),
             "time": round(time.time() - self.epoch_start, 3)}
      history.append(row)
      workdir.write_history(dirs, history)
      log(f"{NAME}: epoch {row['epoch']}/{epochs}: loss {row['loss']:.4f} accuracy "
          f"{row['accuracy']:.4f} | val_loss {row['val_loss']:.4f} val_accuracy "
          f"{row['val_accuracy']:.4f} | {row['time']:.1f} s")

  stopping = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience,
                                           restore_best_weights=True)
  train_start = time.time()
  model.fit(batches, validation_data=(x_val.astype("float32"), y_val), epochs=epochs,
            callbacks=[WriteHistory(), stopping], verbose=0)
  train_s = time.time() - train_start
  if not history:
    raise cli.ToolError("no epoch was trained")
  # EarlyStopping has restored the best epoch's weights at the end of fit (Keras 3 does so
  # whether it stopped early or ran out of epochs).
  best = min(history, key=lambda r: r["val_loss"])
  test_loss, test_accuracy = model.evaluate(x_test.astype("float32"), y_test,
                                            batch_size=batch_size, verbose=0)
  results = {
      "test_loss": float(test_loss), "test_accuracy": float(test_accuracy),
      "test_examples": int(len(x_test)), "best_epoch": int(best["epoch"]),
      "best_val_loss": float(best["val_loss"]), "epochs_run": len(history),
      "resumed_from_epoch": 0, "stopped_early": len(history) < epochs,
      "examples_per_s": round(len(history) * len(x_train) / train_s, 1),
      "wall_time_s": round(time.time() - started, 3), "num_replicas": 1,
      "strategy": "keras_fit", "model": model_name,
      "trainable_parameters": train.count_parameters(model.trainable_variables),
      "global_batch_size": batch_size, "dtype_policy": "float32",
      "class_names": list(info.class_names)}
  workdir.write_results(dirs, results)
  log(f"{NAME}: test_loss {test_loss:.4f} test_accuracy {test_accuracy:.4f} (best epoch "
      f"{best['epoch']} of {len(history)}); results in {model_dir}")
  return results


def define_flags(flag_values):
  flags.DEFINE_string("data_dir", None, "A data directory of pipeline.build_tfrecords.",
                      flag_values=flag_values)
  flags.DEFINE_string("model_dir", None, "Where history.csv and results.json go.",
                      flag_values=flag_values)
  flags.DEFINE_string("model", "basic", "A model of trainer.models (simple, basic, ...).",
                      flag_values=flag_values)
  flags.DEFINE_integer("epochs", 500, "At most this many epochs.", lower_bound=1,
                       flag_values=flag_values)
  flags.DEFINE_integer("patience", 25, "Early stopping: epochs without a lower val_loss.",
                       lower_bound=1, flag_values=flag_values)
  flags.DEFINE_integer("batch_size", 128, "Batch size.", lower_bound=1, flag_values=flag_values)
  flags.DEFINE_float("learning_rate", 1e-4, "Adam's learning rate.", lower_bound=0.0,
                     flag_values=flag_values)
  flags.DEFINE_integer("seed", 0, "Seeds the weights and the generator's order and draws.",
                       flag_values=flag_values)
  flags.DEFINE_enum("validation_split", "validation", ["validation", "test"],
                    "The split fit validates (and early-stops) on.", flag_values=flag_values)
  cli.mark_required(["data_dir", "model_dir"], flag_values)


def main(argv, flag_values):
  del argv
  from trainer import models
  if flag_values.model not in models.MODELS:
    raise cli.ToolError(f"--model={flag_values.model}: expected one of "
                        f"{', '.join(sorted(models.MODELS))}")
  run(flag_values.data_dir, flag_values.model_dir, model_name=flag_values.model,
      epochs=flag_values.epochs, patience=flag_values.patience,
      batch_size=flag_values.batch_size, learning_rate=flag_values.learning_rate,
      seed=flag_values.seed, validation_split=flag_values.validation_split)
  return 0


COMMAND = cli.Command(NAME, define_flags, main, tensorflow=True)

if __name__ == "__main__":
  COMMAND.run()
