r"""Evaluates a finished run's exported model on a split of a data directory.

  python -m trainer.evaluate --model_dir=RUN --data_dir=DATA [--split=test] [--json]

Prints the loss, the accuracy, the accuracy of each class and the confusion matrix (rows the
true class, columns the predicted one). It scores saved_model/ (the model that is served)
through its serving_pixels signature with the trainer's own input pipeline and eval step
(input_pipeline.eval_dataset, steps.make_eval_step), so that on the run's own data and test
split it reproduces results.json's test_loss and test_accuracy.

The model's classes are looked up by name in the data's: data with more classes is scored on
the model's classes only (as a run with --classes was trained), data lacking one of them is
an error naming it.

Exit status: 0 evaluated; 1 a mistake (a missing or bad flag, no model, no data directory):
one line `trainer.evaluate: error: ...` naming it (docs/cli.md).
"""

import json

from absl import app
from absl import flags

from pipeline import logs

logs.import_tensorflow_if_main(__name__)  # before the imports below load TensorFlow

from pipeline import command_line
from pipeline import dataset_info
from pipeline import features
from trainer import serving
from trainer import workdir

NAME = "trainer.evaluate"


class EvaluateError(ValueError):
  """The model cannot be evaluated as asked; the message names the flag or path."""


def model_classes(info, class_names):
  """`info` restricted to the model's classes, labelled in the model's order."""
  if tuple(info.class_names) == tuple(class_names):
    return info
  index = {name: i for i, name in enumerate(info.class_names)}
  missing = [name for name in class_names if name not in index]
  if missing:
    raise EvaluateError(f"--data_dir={info.data_dir}: has no class {', '.join(missing)} of "
                        f"the model's {len(class_names)} (the data's: "
                        f"{', '.join(info.class_names)})")
  return info.subset([index[name] for name in class_names])


class _PixelsModel:
  """The SavedModel's serving_pixels signature as the callable steps.make_eval_step expects."""

  def __init__(self, served):
    self._fn = served.loaded.signatures[serving.SERVING_PIXELS]

  def __call__(self, images, training=False):
    del training  # a SavedModel signature always runs in inference mode
    return self._fn(**{serving.PIXELS: images})["probabilities"]


def evaluate(served, info, split, *, batch_size=256):
  """{"loss", "accuracy", "examples", "class_names", "per_class_accuracy", "confusion"} of
  the served model on `split` of `info` (already restricted by model_classes)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from trainer import input_pipeline  # pylint: disable=g-import-not-at-top
  from trainer import steps as steps_lib  # pylint: disable=g-import-not-at-top
  if split not in info.splits:
    raise EvaluateError(f"--split={split}: {info.data_dir} has the splits "
                        f"{', '.join(info.splits)}")
  if info.split(split).num_examples == 0:
    raise EvaluateError(f"--split={split}: {info.data_dir} has no {split} examples")
  dataset, steps = input_pipeline.eval_dataset(info, split, batch_size=batch_size,
                                               image_size=served.image_size, cache=None)
  eval_step = steps_lib.make_eval_step(_PixelsModel(served), tf.distribute.get_strategy(),
                                       num_classes=len(served.class_names))
  out = steps_lib.run_steps(eval_step, iter(dataset), steps)
  confusion = out["confusion"]
  per_class = [row[i] / sum(row) if sum(row) else None for i, row in enumerate(confusion)]
  return {"loss": out["loss"], "accuracy": out["accuracy"], "examples": int(out["examples"]),
          "class_names": list(served.class_names), "per_class_accuracy": per_class,
          "confusion": confusion}


def report_lines(metrics, split, results=None):
  """The printed report; `results`: the run's results.json, shown beside a test split."""
  lines = [f"{split}: loss {metrics['loss']:.4f}, accuracy {metrics['accuracy']:.4f} "
           f"({metrics['examples']:,} examples)"]
  if results is not None and split == "test":
    lines.append(f"results.json (when trained): test_loss {results['test_loss']:.4f}, "
                 f"test_accuracy {results['test_accuracy']:.4f}")
  names = metrics["class_names"]
  corner = "true\\predicted"
  width = max(len(corner), *(len(n) for n in names))
  lines.append("")
  lines.append(f"{'class':<{width}}  accuracy  examples")
  for name, accuracy, row in zip(names, metrics["per_class_accuracy"], metrics["confusion"]):
    shown = "-" if accuracy is None else f"{accuracy:.4f}"
    lines.append(f"{name:<{width}}  {shown:>8}  {sum(row):>8,}")
  lines.append("")
  lines.append("confusion matrix (rows: true class, columns: predicted)")
  column = max(6, *(len(n) for n in names))
  lines.append(f"{corner:<{width}}  " + " ".join(f"{n:>{column}}" for n in names))
  for name, row in zip(names, metrics["confusion"]):
    lines.append(f"{name:<{width}}  " + " ".join(f"{c:>{column}}" for c in row))
  return lines


def define_flags(flag_values=flags.FLAGS):
  flags.DEFINE_string("model_dir", None, "A finished run's --model_dir (or its saved_model/ "
                      "directory), local or gs://.", flag_values=flag_values)
  flags.DEFINE_string("data_dir", None, "Data directory with tfrecords_info.json (local or "
                      "gs://), e.g. the run's own --data_dir.", flag_values=flag_values)
  flags.DEFINE_enum("split", "test", list(features.SPLITS), "Split to evaluate.",
                    flag_values=flag_values)
  flags.DEFINE_integer("batch_size", 256, "Images per model call.", lower_bound=1,
                       flag_values=flag_values)
  flags.DEFINE_boolean("json", False, "Print one JSON object instead of the report.",
                       flag_values=flag_values)
  # run_command checks them (so does a test calling it with flags of its own).
  command_line.mark_required(["model_dir", "data_dir"], flag_values, validate=False)


def run_command(argv, flag_values=flags.FLAGS):
  if len(argv) > 1:
    raise EvaluateError(f"unexpected arguments: {' '.join(argv[1:])}")
  for name in ("model_dir", "data_dir"):
    if not flag_values[name].value:
      raise EvaluateError(f"--{name} is required")
  served = workdir.load_saved_model(flag_values.model_dir)
  info = model_classes(dataset_info.load(flag_values.data_dir), served.class_names)
  metrics = evaluate(served, info, flag_values.split, batch_size=flag_values.batch_size)
  if flag_values.json:
    print(json.dumps({"split": flag_values.split, **metrics}))
  else:
    results = workdir.read_results(flag_values.model_dir)
    print("\n".join(report_lines(metrics, flag_values.split, results)))
  return 0


def main(argv):
  try:
    return run_command(argv)
  except (EvaluateError, serving.ServingError, dataset_info.DatasetInfoError,
          workdir.RunDirError) as e:
    command_line.fail(NAME, e)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=lambda argv: command_line.parse(NAME, argv))
