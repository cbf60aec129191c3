"""What a run writes for TensorBoard, under <model_dir>/tensorboard/ (chief only):

  train/       per epoch (step = epoch): loss, accuracy, examples_per_s, learning_rate;
               every --summary_steps train steps (step = train steps since the run began,
               over both stages): steps/loss, steps/accuracy (means over the steps since
               the previous report, within the epoch: validation is not among them),
               steps/learning_rate (of the last of them), steps/examples_per_s (wall clock
               between two reports); images/augmented (step 0): --summary_images images of
               the first train batch, after augmentation
  validation/  per epoch: loss, accuracy
  test/        at the end: loss and accuracy of the best weights at step 0, at the best
               epoch and at the last epoch: a flat line across the validation curves, where
               one point at the best epoch alone shows as a dot clipped at the chart's edge;
               and results (a text table: test metrics, best epoch, epochs run)

The writers and the scalar format are trainer/workdir.py's (summary_writers, write_scalars).
Images and text go through tf.summary.image and tf.summary.text, which need the tensorboard
package (requirements.txt).
"""

import time

import tensorflow as tf

from trainer import workdir


class StepReports:
  """steps.run_steps' `report`: train scalars every --summary_steps steps.

  The learning rate is that of the report's step: rate_of_step(step in the stage's
  optimizer) is asked for it, from the optimizer's step counter (a host read, once a report).
  """

  def __init__(self, writer, every):
    self.writer, self.every = writer, every
    self.rate = lambda: None
    self._last = time.time()

  def start_epoch(self, rate):
    """rate: fn() -> the learning rate of the last step run (schedules.last_step_rate)."""
    self.rate = rate
    self._last = time.time()

  def __call__(self, step, sums):
    now = time.time()
    seconds, self._last = now - self._last, now
    count = sums["count"]
    scalars = {"steps/loss": sums["loss"] / count, "steps/accuracy": sums["correct"] / count,
               "steps/examples_per_s": count / seconds if seconds > 0 else 0.0}
    rate = self.rate()
    if rate is not None:
      scalars["steps/learning_rate"] = rate
    workdir.write_scalars(self.writer, step, scalars)


def write_images(writer, images, max_images):
  """`max_images` of a batch of uint8 images [B, H, W, 3], at step 0."""
  with writer.as_default(step=0):
    tf.summary.image("images/augmented", images, max_outputs=max_images,
                     description="Training images, after augmentation (read apart from the "
                                 "training stream)")
  writer.flush()


def write_test(writer, test, best_epoch, epochs_run):
  """The test metrics of the best weights: scalars at step 0, best_epoch and epochs_run (a
  flat line beside the validation curves), and a text table at step epochs_run."""
  for step in sorted({0, best_epoch, epochs_run}):
    workdir.write_scalars(writer, step, {"loss": test["loss"], "accuracy": test["accuracy"]})
  table = ("| test_loss | test_accuracy | test examples | best epoch | epochs run |\n"
           "| --- | --- | --- | --- | --- |\n"
           f"| {test['loss']:.4f} | {test['accuracy']:.4f} | {int(test['examples'])} | "
           f"{best_epoch} | {epochs_run} |")
  with writer.as_default(step=epochs_run):
    tf.summary.text("results", table)
  writer.flush()
