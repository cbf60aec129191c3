r"""Predicts the class of images with a finished run's exported model.

  python -m trainer.predict --model_dir=RUN cat.jpg photos/ list.csv gs://b/x.png https://h/y.jpg
  python -m trainer.predict --model_dir=RUN --top_k=2 photos/          # 2 more classes a line
  python -m trainer.predict --model_dir=RUN --output=predictions.csv photos/   # or .json

Inputs are image files, folders (every file with an image extension below them, recursively)
and CSV path lists (a `path` column; relative paths are relative to the CSV, as for the Beam
job's --path_list), each local, gs:// or http(s). Every image is read and checked by the Beam
job's own code (pipeline.sources.read_bytes, pipeline.images.prepare: any size, grayscale,
RGBA, palette, CMYK, 16-bit; the same conversions, the same rejection reasons), then decoded
and resized by the trainer's (input_pipeline.decode_image, resize_pixels) in a tf.data
pipeline, batched, and run through saved_model/'s serving_pixels_uint8 signature: an image
reaches the network exactly as it would have reached it in training.

Prints one line per image on stdout, in input order: `path<TAB>class<TAB>probability`, then
`<TAB>class<TAB>probability` for each of --top_k more. With --output, writes CSV or JSON
(by the file's extension) instead. An image that cannot be read or decoded is reported on
stderr (`trainer.predict: PATH: reason: detail`) and the rest are still predicted. A progress
line goes to stderr every --progress_seconds. Exit status: 0 when every image was predicted,
2 when some failed (also when all did), 1 when the command could not run (bad flags, no model,
no inputs: one line `trainer.predict: error: ...` naming it). docs/cli.md has every command's.
"""

import collections
import concurrent.futures
import csv
import dataclasses
import io
import json
import os
import sys
import threading
import time

from absl import app
from absl import flags

from pipeline import logs

logs.import_tensorflow_if_main(__name__)  # before the imports below load TensorFlow

from pipeline import command_line
from pipeline import images as images_lib
from pipeline import sources
from trainer import serving
from trainer import workdir

NAME = "trainer.predict"
# A folder's files with these extensions are predicted; the others are skipped (and counted).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
OUTPUT_FORMATS = (".csv", ".json")
READ_CHUNK = 64  # images per element handed from the reading threads to tf.data


class PredictError(ValueError):
  """Nothing can be predicted as asked; the message names the flag or path."""


@dataclasses.dataclass(frozen=True)
class Prediction:
  """One input: its probabilities (numpy [classes]) or the reason it failed."""
  path: str
  probabilities: object = None
  error: str = ""  # "reason: detail", reason one of pipeline.images' slugs or not_found...


# --- inputs --------------------------------------------------------------------------------


def _is_remote(path):
  return "://" in path


def _is_dir(path):
  if not _is_remote(path):
    return os.path.isdir(path)
  if path.startswith(("http://", "https://")):
    return False  # an address is one file
  import fsspec  # pylint: disable=g-import-not-at-top
  fs, base = fsspec.core.url_to_fs(path)
  return fs.isdir(base)


def _folder_files(folder):
  """Every file below `folder` (sorted, hidden ones left out) -> (images, others)."""
  if _is_remote(folder):
    import fsspec  # pylint: disable=g-import-not-at-top
    fs, base = fsspec.core.url_to_fs(folder)
    found = [fs.unstrip_protocol(p) for p in fs.find(base)]
    root = fs.unstrip_protocol(base)
  else:
    found = [os.path.join(d, f) for d, _, files in os.walk(folder) for f in files]
    root = folder
  found = [p for p in sorted(found)
           if not any(part.startswith(".") for part in p[len(root):].split("/") if part)]
  is_image = lambda p: p.lower().endswith(IMAGE_EXTENSIONS)
  return [p for p in found if is_image(p)], [p for p in found if not is_image(p)]


def _path_list(csv_path):
  """The `path` column of a CSV (relative paths relative to its folder)."""
  try:
    data = sources.read_bytes(csv_path)
  except FileNotFoundError:
    raise PredictError(f"{csv_path}: no such file") from None
  rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig", errors="replace"),
                                         newline="")))
  if not rows or "path" not in rows[0]:
    raise PredictError(f"{csv_path}: a path list needs a header with a `path` column "
                       "(as the Beam job's --path_list)")
  base = csv_path.rsplit("/", 1)[0] if "/" in csv_path else "."
  paths = []
  for row in rows:
    path = (row.get("path") or "").strip()
    if path:
      paths.append(path if _is_remote(path) or os.path.isabs(path) else f"{base}/{path}")
  return paths


def list_inputs(args):
  """Command-line inputs -> (image paths in order, number of folder files skipped because
  their extension is not an image's). A path that does not exist stays in the list (it is
  reported as not_found when read); a folder with no images is a PredictError."""
  paths, skipped = [], 0
  for arg in args:
    if arg.lower().endswith(".csv"):
      paths.extend(_path_list(arg))
    elif _is_dir(arg):
      found, others = _folder_files(arg)
      if not found:
        raise PredictError(f"{arg}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in it")
      paths.extend(found)
      skipped += len(others)
    else:
      paths.append(arg)
  return paths, skipped


def read_image(path):
  """The record bytes the Beam job would store for the image at `path` (its own checks and
  conversions); raises BadImage with a reason."""
  try:
    data = sources.read_bytes(path)
  except FileNotFoundError:
    raise images_lib.BadImage("not_found", "no such file") from None
  except Exception as e:  # pylint: disable=broad-except (gs://, http(s): many kinds)
    raise images_lib.BadImage("unreadable", f"{type(e).__name__}: {e}") from None
  return images_lib.prepare(data)[0]


# --- predicting ----------------------------------------------------------------------------


def _read_ahead(paths, readers, window, on_error):
  """Yields (index, record bytes) of the readable images in order, reading up to `window`
  ahead on `readers` threads (remote reads wait on the network; PIL releases the GIL while
  it decodes); calls on_error(index, message) for the others, in order."""
  with concurrent.futures.ThreadPoolExecutor(readers) as pool:
    pending = collections.deque()
    todo = iter(enumerate(paths))
    for index, path in todo:
      pending.append((index, pool.submit(read_image, path)))
      if len(pending) >= window:
        break
    while pending:
      index, future = pending.popleft()
      for next_index, path in todo:
        pending.append((next_index, pool.submit(read_image, path)))
        break
      try:
        yield index, future.result()
      except images_lib.BadImage as e:
        on_error(index, str(e))


def predict(served, paths, *, batch_size=256, readers=8, progress=None):
  """Yields a Prediction per path, in order. `served`: serving.load(...). progress(done):
  called after every batch with the number of images done."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from trainer import input_pipeline  # pylint: disable=g-import-not-at-top
  size = served.image_size
  failed = {}  # index -> message; written by the reading thread before later indices come
  lock = threading.Lock()

  def on_error(index, message):
    with lock:
      failed[index] = message

  def records():
    # In chunks: each element from_generator hands over costs a Python call with the GIL
    # held, as much as reading a small image; unbatched again at once, in C++.
    indices, chunk = [], []
    for index, record in _read_ahead(paths, readers, 4 * batch_size, on_error):
      indices.append(index)
      chunk.append(record)
      if len(chunk) == READ_CHUNK:
        yield indices, chunk
        indices, chunk = [], []
    if chunk:
      yield indices, chunk

  def decode(index, record):
    image = input_pipeline.decode_image(record)
    same = tf.reduce_all(tf.equal(tf.shape(image)[:2], size))
    image = tf.cond(same, lambda: image, lambda: input_pipeline.resize_pixels(image, size))
    return index, tf.ensure_shape(image, [*size, 3])

  ds = tf.data.Dataset.from_generator(
      records, output_signature=(tf.TensorSpec([None], tf.int64),
                                 tf.TensorSpec([None], tf.string)))
  ds = ds.unbatch().map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  # The Beam job's checks make TensorFlow's decoders accept what passed them; should one
  # still refuse an image, skip it (reported below) rather than stop every other one.
  ds = ds.ignore_errors().batch(batch_size).prefetch(2)
  next_index, done = 0, 0

  def settled(up_to):
    """Predictions of the failed (or silently dropped) indices below `up_to`."""
    nonlocal next_index
    out = []
    while next_index < up_to:
      with lock:
        message = failed.pop(next_index, None)
      out.append(Prediction(paths[next_index], error=message or
                            "decode_failed: TensorFlow could not decode it"))
      next_index += 1
    return out

  for indices, pixels in ds:
    probabilities = served.probabilities(pixels).numpy()
    for index, row in zip(indices.numpy().tolist(), probabilities):
      yield from settled(index)
      yield Prediction(paths[index], probabilities=row)
      next_index = index + 1
    done += len(probabilities)
    if progress:
      progress(done)
  yield from settled(len(paths))


# --- output --------------------------------------------------------------------------------


def top_classes(prediction, class_names, k):
  """[(class name, probability)] of the k most probable classes, most probable first."""
  order = prediction.probabilities.argsort()[::-1][:k]
  return [(class_names[i], float(prediction.probabilities[i])) for i in order]


def line(prediction, class_names, top_k):
  """`path<TAB>class<TAB>probability` (+ a class and probability for each of top_k more)."""
  cells = [prediction.path]
  for name, p in top_classes(prediction, class_names, 1 + top_k):
    cells += [name, f"{p:.4f}"]
  return "\t".join(cells)


def csv_text(predictions, class_names, top_k):
  """Columns path, class_name, probability, class_name_2, probability_2, ..., error."""
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  more = [c for k in range(2, top_k + 2) for c in (f"class_name_{k}", f"probability_{k}")]
  writer.writerow(["path", "class_name", "probability", *more, "error"])
  for p in predictions:
    cells = [""] * (2 + 2 * top_k)
    if p.error == "":
      cells = [v for name, prob in top_classes(p, class_names, 1 + top_k)
               for v in (name, f"{prob:.6f}")]
    writer.writerow([p.path, *cells, p.error])
  return out.getvalue()


def json_text(predictions, class_names, top_k):
  """A list of {path, class_name, probability, top_k: [{class_name, probability}],
  probabilities: {class: p}, error} (failed images: path and error only)."""
  records = []
  for p in predictions:
    if p.error:
      records.append({"path": p.path, "error": p.error})
      continue
    ranked = top_classes(p, class_names, 1 + top_k)
    records.append({
        "path": p.path, "class_name": ranked[0][0], "probability": ranked[0][1],
        "top_k": [{"class_name": n, "probability": v} for n, v in ranked[1:]],
        "probabilities": {n: float(v) for n, v in zip(class_names, p.probabilities)},
        "error": ""})
  return json.dumps(records, indent=1) + "\n"


# --- command line --------------------------------------------------------------------------


def define_flags(flag_values=flags.FLAGS):
  flags.DEFINE_string("model_dir", None, "A finished run's --model_dir (or its saved_model/ "
                      "directory), local or gs://.", flag_values=flag_values)
  flags.DEFINE_integer("top_k", 0, "Classes to print after the most probable one.",
                       lower_bound=0, flag_values=flag_values)
  flags.DEFINE_string("output", "", "Write predictions to this .csv or .json file (local or "
                      "gs://) instead of stdout.", flag_values=flag_values)
  flags.DEFINE_integer("batch_size", 256, "Images per model call.", lower_bound=1,
                       flag_values=flag_values)
  flags.DEFINE_integer("readers", 8, "Threads reading and checking image files.",
                       lower_bound=1, flag_values=flag_values)
  flags.DEFINE_float("progress_seconds", 10.0, "Seconds between progress lines on stderr.",
                     flag_values=flag_values)
  # _check_flags checks it, with what it should be.
  command_line.mark_required(["model_dir"], flag_values, validate=False)


def _check_flags(flag_values, inputs):
  if not flag_values.model_dir:
    raise PredictError("--model_dir is required: the --model_dir of a finished run")
  if not inputs:
    raise PredictError("no inputs: give image files, folders or .csv path lists after the "
                       "flags")
  if flag_values.output and not flag_values.output.lower().endswith(OUTPUT_FORMATS):
    raise PredictError(f"--output={flag_values.output}: the file name must end with "
                       f"{' or '.join(OUTPUT_FORMATS)}")


def run_command(argv, flag_values=flags.FLAGS):
  """Runs the command on parsed flags and positional inputs argv[1:]; returns the exit
  status. PredictError and serving.ServingError are the user's to fix."""
  inputs = argv[1:]
  _check_flags(flag_values, inputs)
  paths, skipped = list_inputs(inputs)
  if skipped:
    print(f"{NAME}: skipped {skipped} file(s) without an image extension in the folders",
          file=sys.stderr)
  served = workdir.load_saved_model(flag_values.model_dir)
  if flag_values.top_k >= len(served.class_names):
    raise PredictError(f"--top_k={flag_values.top_k}: the model has only "
                       f"{len(served.class_names)} classes (at most --top_k="
                       f"{len(served.class_names) - 1})")
  started = last = time.time()

  def progress(done):
    nonlocal last
    if time.time() - last >= flag_values.progress_seconds:
      last = time.time()
      print(f"{NAME}: {done:,} of {len(paths):,} images, "
            f"{done / (last - started):,.0f} images/s", file=sys.stderr, flush=True)

  results, failures = [], collections.Counter()
  for p in predict(served, paths, batch_size=flag_values.batch_size,
                   readers=flag_values.readers, progress=progress):
    if p.error:
      failures[p.error.split(":", 1)[0]] += 1
      print(f"{NAME}: {p.path}: {p.error}", file=sys.stderr, flush=True)
    elif not flag_values.output:
      print(line(p, served.class_names, flag_values.top_k), flush=False)
    results.append(p)
  if flag_values.output:
    write = csv_text if flag_values.output.lower().endswith(".csv") else json_text
    workdir.write_text(flag_values.output, write(results, served.class_names,
                                                 flag_values.top_k))
  sys.stdout.flush()
  failed = sum(failures.values())
  summary = f"{NAME}: predicted {len(results) - failed:,} of {len(results):,} images"
  if failed:
    summary += " (failed: " + ", ".join(f"{r} {n}" for r, n in failures.most_common()) + ")"
  print(f"{summary} in {time.time() - started:.1f} s"
        + (f", written to {flag_values.output}" if flag_values.output else ""),
        file=sys.stderr)
  return 2 if failed else 0


def main(argv):
  try:
    return run_command(argv)
  except (PredictError, serving.ServingError) as e:
    command_line.fail(NAME, e)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=lambda argv: command_line.parse(NAME, argv))
