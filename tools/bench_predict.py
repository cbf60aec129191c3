"""Images/s of trainer.predict beside model.predict on the same images, already decoded.

    python -m tools.bench_predict                                   # untrained simple, sample JPEGs
    python -m tools.bench_predict --model_dir=RUN --images=DIR --repeats=3 --json

  predict        trainer.predict.predict: image files -> read and checked by the Beam job's
                 code (--readers threads) -> decoded and resized in tf.data -> batches
                 through saved_model/'s serving_pixels_uint8 -> probabilities; what
                 `python -m trainer.predict` does, without printing.
  saved_model    the same SavedModel signature on the decoded images held in memory, in
                 batches of --batch_size: the served model alone, no reading or decoding.
  model.predict  model.keras's `predict` on those decoded images (float32, --batch_size): what
                 a Keras user would run on pixels already in memory.

The decoded images are decoded once, before timing, as predict decodes them, so all three
classify the same pixels. Each repeat times the three in turn (tools/harness.py); each
method's first call (tracing, thread start-up) is outside the timings. The goal: predict
within 10% of model.predict (ratio >= 0.9).

Without --model_dir the tool exports an untrained --model (weights do not change the speed)
to a temporary run directory, as the trainer exports; without --images it reads the
repository's 500 sample JPEGs (pipeline/sample_data/cifar10), --copies times over.
"""

import os
import pathlib
import tempfile
import time

from absl import flags

from tools import cli
from tools import harness

REPO = pathlib.Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO / "pipeline" / "sample_data" / "cifar10"
METHODS = ("predict", "saved_model", "model.predict")
TARGET = 0.9  # predict images/s at least 90% of model.predict's


def export_untrained(model_name, image_size, run_dir):
  """A run directory holding model.keras and saved_model/ of an untrained model."""
  from trainer import models
  from trainer import workdir
  class_names = [f"class_{i}" for i in range(10)]
  model = models.build(model_name, len(class_names), (image_size, image_size, 3))
  workdir.export(model, workdir.RunDirs(str(run_dir)), class_names)
  return str(run_dir)


def decode_all(paths, size):
  """uint8 [N, H, W, 3]: each image as trainer.predict decodes and resizes it."""
  import numpy as np
  import tensorflow as tf
  from trainer import input_pipeline
  from trainer import predict
  out = []
  for path in paths:
    image = input_pipeline.decode_image(predict.read_image(path))
    if tuple(image.shape[:2]) != tuple(size):
      image = input_pipeline.resize_pixels(image, size)
    out.append(tf.convert_to_tensor(image).numpy())
  return np.stack(out)


def run(model_dir, paths, *, batch_size=256, readers=8, repeats=3, log=None):
  """{"images_per_s": {method: median}, "runs", "ratios", "within_target", "settings"}."""
  import keras
  from trainer import predict
  from trainer import serving
  from trainer import workdir
  served = serving.load(workdir.saved_model_dir(model_dir))
  model = keras.models.load_model(workdir.join(model_dir, workdir.KERAS_MODEL))
  pixels = decode_all(paths, served.image_size)
  floats = pixels.astype("float32")

  def run_predict():
    failed = [p.path for p in predict.predict(served, paths, batch_size=batch_size,
                                              readers=readers) if p.error]
    if failed:
      raise cli.ToolError(f"{len(failed)} image(s) failed, e.g. {failed[0]}: pass images "
                          "that trainer.predict reads")

  def run_saved_model():
    for start in range(0, len(pixels), batch_size):
      served.probabilities(pixels[start:start + batch_size]).numpy()

  def run_keras():
    model.predict(floats, batch_size=batch_size, verbose=0)

  calls = {"predict": run_predict, "saved_model": run_saved_model, "model.predict": run_keras}
  for call in calls.values():  # tracing and thread start-up, untimed
    call()

  def measure(method, _):
    start = time.perf_counter()
    calls[method]()
    return len(paths) / (time.perf_counter() - start)

  runs = harness.repeat(METHODS, repeats, measure, log=log, unit=" images/s")
  median = harness.medians(runs)
  return {
      "images_per_s": median,
      "runs": runs,
      "ratios": {"predict / model.predict": median["predict"] / median["model.predict"],
                 "saved_model / model.predict":
                     median["saved_model"] / median["model.predict"]},
      "within_target": median["predict"] >= TARGET * median["model.predict"],
      "settings": {"model_dir": model_dir, "images": len(paths),
                   "image_size": list(served.image_size), "batch_size": batch_size,
                   "readers": readers, "repeats": repeats, **harness.machine()},
  }


def format_table(result):
  s = result["settings"]
  lines = harness.spread_table(
      result["runs"], label="method",
      heading=f"images/s ({s['images']} images, model input {s['image_size'][0]}x"
              f"{s['image_size'][1]}, batch {s['batch_size']}, {s['readers']} readers, "
              f"{s['repeats']} repeats)")
  lines += harness.ratio_lines(result["ratios"])
  lines.append(f"predict is {'within' if result['within_target'] else 'NOT within'} "
               f"{100 * (1 - TARGET):.0f}% of model.predict")
  lines.append(harness.machine_line(s))
  return "\n".join(lines)


def _image_paths(images, copies):
  from trainer import predict
  if images:
    paths, _ = predict.list_inputs([images])
  else:
    paths = sorted(str(p) for p in SAMPLE_DIR.glob("*/*/*.jpg"))
  if not paths:
    raise cli.ToolError(f"--images={images}: no images")
  return paths * copies


def define_flags(flag_values):
  fv = {"flag_values": flag_values}
  flags.DEFINE_string("model_dir", "", "A finished run (or its saved_model/ beside "
                      "model.keras); default: an untrained --model exported to a temp dir.",
                      **fv)
  flags.DEFINE_string("model", "simple", "Without --model_dir: the trainer.models name.", **fv)
  flags.DEFINE_integer("image_size", 32, "Without --model_dir: the model's input size.",
                       lower_bound=1, **fv)
  flags.DEFINE_string("images", "", "A folder, image file or .csv path list; default: the "
                      "500 sample JPEGs.", **fv)
  flags.DEFINE_integer("copies", 4, "Times the image list is repeated (a longer input).",
                       lower_bound=1, **fv)
  flags.DEFINE_integer("batch_size", 256, "Images per model call, every method.",
                       lower_bound=1, **fv)
  flags.DEFINE_integer("readers", 8, "trainer.predict --readers.", lower_bound=1, **fv)
  harness.define_flags(flag_values, repeats=3)


def main(argv, flag_values):
  harness.start(argv)
  fv = flag_values
  paths = _image_paths(fv.images, fv.copies)
  kwargs = dict(batch_size=fv.batch_size, readers=fv.readers, repeats=fv.repeats,
                log=harness.progress(fv.json))
  if fv.model_dir:
    result = run(fv.model_dir, paths, **kwargs)
  else:
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
      model_dir = export_untrained(fv.model, fv.image_size, os.path.join(tmp, "run"))
      result = run(model_dir, paths, **kwargs)
  harness.emit(result, format_table, fv.json)


COMMAND = cli.Command("tools.bench_predict", define_flags, main, tensorflow=True)

if __name__ == "__main__":
  COMMAND.run()
