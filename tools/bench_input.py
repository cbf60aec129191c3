"""Images/s of four ways to feed augmented CIFAR batches, side by side on the same images,
and of this project's pipeline streaming from its shards beside reading its cache.

    python -m tools.bench_input                      # a table
    python -m tools.bench_input --json               # {"images_per_s": {...}, ...}
    python -m tools.bench_input --deterministic      # + project_host with a fixed order
    python -m tools.bench_input --nostream           # only the four methods

  image_data_generator  the report's input path: Keras' ImageDataGenerator (flip, rotation 15,
                        zoom 0.1, shifts 0.1) over decoded images in memory, one image at a
                        time in Python/scipy.
  tfdata_keras_layers   tf.data from the same decoded images in memory, the same augmentation
                        as Keras preprocessing layers (RandomFlip, RandomRotation, RandomZoom,
                        RandomTranslation) applied to whole batches.
  project_host          this project's trainer.input_pipeline.train_dataset from TFRecords,
                        augmenting on the host (one projective transform per batch).
  project_device        the same pipeline without augmentation (the host only decodes, from
                        the cache), and trainer.augment.augment_batch in a tf.function step,
                        as the train step would run it on the accelerator (here: the CPU).

And, with --stream (the default), project_host without a cache (cache=None, what
`--cache=auto` does with data larger than its budget): every batch is read, parsed and decoded
from the TFRecords on local disk again, every epoch:

  project_host_stream   the 32-px JPEG records of project_host, streamed.
  project_host_stream_raw
                        the same images as raw records (the Beam job's --image_format=raw:
                        the pixels pipeline.images.prepare decodes), streamed: decoded a
                        parse batch at a time, no JPEG decoding.
  project_host_<S>, project_host_stream_<S>, project_host_stream_raw_<S>
                        project_host cached and streamed on the same images stored at S px
                        (--large_size, default 128): each JPEG resized by
                        pipeline.images.prepare and stored as PNG, the bytes the Beam job
                        writes with --image_size=S, and as raw pixels (--image_size=S
                        --image_format=raw); trained at S px.

The ratio stream / cached is given per size and format (both streamed rows against the
cached one: the cache holds the same pixels whatever the records store). (The shards are
local files read through the page cache: after the warm-up they are in RAM, so what
streaming costs here is the CPU of reading, parsing and decoding, not the disk.)

All are timed in steady state: after a warm-up that fills the caches (the TFRecords are
decoded once, in the first epoch, as in training) and traces the functions. Each repeat times
`--batches` batches of every method in turn, so that changes in machine load hit all of them;
the table gives min / median / max over `--repeats`.
"""

import dataclasses
import os
import pathlib
import tempfile
import time

from absl import flags

from tools import cli
from tools import harness

BATCH_SIZE = 128  # the report's batch size
DEFAULT_IMAGE_DIR = "/tmp/cifar10/train"  # <class>/*.jpg, e.g. the extracted CIFAR-10 JPEGs
SETTLE_BATCHES = 20  # untimed batches before each timing (at most --batches)
METHODS = ("image_data_generator", "tfdata_keras_layers", "project_host", "project_device")
# The same two project methods with the ImageProjectiveTransformV3 resampler instead of the
# default XLA one (trainer/augment.py): reported under "op_resampler", with --op_resampler.
OP_METHODS = ("project_host_op", "project_device_op")
# project_host as `python -m trainer.main --deterministic` reads (every parallel stage in
# order), with --deterministic: reported under "deterministic", with its ratio to
# project_host among the ratios.
DETERMINISTIC_METHOD = "project_host_deterministic"
STREAM_METHOD = "project_host_stream"  # cache=None on the 32-px records
STREAM_RAW_METHOD = "project_host_stream_raw"  # cache=None on 32-px raw records
DEFAULT_LARGE_SIZE = 128  # px: the larger stored size of the streaming rows


def large_methods(size):
  """(cached, streamed, streamed raw) method names at the larger stored size `size` px."""
  return (f"project_host_{size}", f"project_host_stream_{size}",
          f"project_host_stream_raw_{size}")


def list_images(image_dir, num_images):
  """[(path, label)]: `num_images` files taken round-robin over the class folders (sorted),
  so that a small sample still has every class."""
  image_dir = pathlib.Path(image_dir)
  classes = sorted(p for p in image_dir.iterdir() if p.is_dir()) if image_dir.is_dir() else []
  if not classes:
    raise cli.ToolError(
        f"--image_dir={image_dir}: no class folders (<class>/*.jpg) found. The default is the "
        "CIFAR-10 JPEG archive extracted to /tmp/cifar10; pipeline/sample_data/cifar10/train "
        "has 400 images to try the tool with.")
  per_class = [sorted(c.glob("*.jpg")) + sorted(c.glob("*.png")) for c in classes]
  out = []
  for i in range(max(len(files) for files in per_class)):
    for label, files in enumerate(per_class):
      if i < len(files):
        out.append((files[i], label))
  if len(out) < num_images:
    raise cli.ToolError(f"--image_dir={image_dir} holds {len(out)} images; --num_images asks "
                     f"for {num_images}")
  return out[:num_images], [c.name for c in classes]


def write_tfrecords(files, class_names, out_dir, image_shape, num_shards=4, resize=False,
                    image_format=None):
  """A data directory (shards + tfrecords_info.json) as the Beam job writes it, one schema
  (pipeline.features). Returns its DatasetInfo.

  resize=False: the original file bytes, which must be images of `image_shape`. True: each
  image resized to `image_shape` by pipeline.images.prepare and stored as it returns (PNG),
  as the Beam job does with --image_size. image_format: "raw" or "png" stores every image so
  (pipeline.images.prepare, as the Beam job's --image_format), resized or not.
  """
  import tensorflow as tf
  from pipeline import dataset_info
  from pipeline import features
  from pipeline import images
  shards = [features.shard_name("train", i, num_shards) for i in range(num_shards)]
  for i, shard in enumerate(shards):
    with tf.io.TFRecordWriter(os.path.join(out_dir, shard)) as writer:
      for j, (path, label) in enumerate(files[i::num_shards]):
        data = path.read_bytes()
        if resize or image_format:
          data, stored_format, _, _ = images.prepare(
              data, tuple(image_shape[:2]) if resize else None,
              image_format or features.SOURCE)
        else:
          stored_format = "png" if path.suffix == ".png" else "jpeg"
        writer.write(features.encode_example(
            key=f"{i}/{j}/{path.name}", image=data, image_format=stored_format,
            height=image_shape[0], width=image_shape[1], label=label))
  per_class = [0] * len(class_names)
  for _, label in files:
    per_class[label] += 1
  dataset_info.write(dataset_info.DatasetInfo(
      data_dir=str(out_dir), class_names=tuple(class_names),
      splits={"train": dataset_info.split_info(str(out_dir), shards, per_class)},
      image_shape=tuple(image_shape), image_format=image_format or features.SOURCE,
      source="tools.bench_input",
      command="tools.bench_input.write_tfrecords"))
  return dataset_info.load(out_dir)


def decode_all(files):
  """(uint8 [N, H, W, 3], int32 [N]) decoded with TensorFlow's decoder (as the pipeline)."""
  import numpy as np
  import tensorflow as tf
  images = [tf.io.decode_image(p.read_bytes(), channels=3, expand_animations=False).numpy()
            for p, _ in files]
  shapes = {i.shape for i in images}
  if len(shapes) != 1:
    raise cli.ToolError(f"the images differ in size ({sorted(shapes)[:3]}...); this benchmark "
                     "compares methods on same-size images")
  return np.stack(images), np.array([label for _, label in files], np.int32)


# --- the four methods: each returns an endless iterator of batches -------------------------


def image_data_generator_batches(images, labels, seed, batch_size=BATCH_SIZE):
  """The report's input path, endless: ImageDataGenerator.flow over all the images,
  permuted every pass (tools.reference_fit trains on it)."""
  from keras.src.legacy.preprocessing.image import ImageDataGenerator
  generator = ImageDataGenerator(horizontal_flip=True, rotation_range=15, zoom_range=0.1,
                                 width_shift_range=0.1, height_shift_range=0.1)
  # float32, as the report fed it (ImageDataGenerator converts to floatx anyway).
  return generator.flow(images.astype("float32"), labels, batch_size=batch_size,
                        shuffle=True, seed=seed)


def keras_layers_dataset(images, labels, seed):
  import keras
  import tensorflow as tf
  layers = keras.Sequential([
      keras.layers.RandomFlip("horizontal", seed=seed),
      keras.layers.RandomRotation(15 / 360, fill_mode="nearest", seed=seed),  # turns
      keras.layers.RandomZoom(0.1, 0.1, fill_mode="nearest", seed=seed),
      keras.layers.RandomTranslation(0.1, 0.1, fill_mode="nearest", seed=seed),
  ])
  ds = tf.data.Dataset.from_tensor_slices((images, labels)).cache()
  ds = ds.shuffle(len(images), seed=seed).repeat().batch(BATCH_SIZE, drop_remainder=True)
  ds = ds.map(lambda x, y: (layers(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
  return ds.prefetch(tf.data.AUTOTUNE)


def project_host_dataset(info, seed, resampler="xla", deterministic=False, cache="memory"):
  """cache="memory" (decoded once, then read from memory) or None (streams every epoch)."""
  from trainer import augment
  from trainer import input_pipeline
  return input_pipeline.train_dataset(info, batch_size=BATCH_SIZE, seed=seed,
                                      augment=augment.AugmentConfig(resampler=resampler),
                                      deterministic=deterministic, cache=cache)


def project_device_batches(info, seed, resampler="xla"):
  """Returns fn() -> a fresh iterator of unaugmented host batches, each then augmented by a
  tf.function step (what the train step runs) before it is handed out."""
  import tensorflow as tf
  from trainer import augment
  from trainer import input_pipeline
  cfg = augment.AugmentConfig(resampler=resampler)
  base_seed = tf.constant([seed, 0], tf.int64)

  @tf.function
  def step(images, step_number):
    seed = tf.random.experimental.stateless_fold_in(base_seed, step_number,
                                                    alg=augment.RNG_ALG)
    out = augment.augment_batch(images, cfg, seed=seed)
    # A scalar out, so that the timing waits for the augmentation to finish. (Both
    # resamplers compute whole batches; under jit_compile XLA could skip unused pixels.)
    return out[0, 0, 0, 0]

  ds = input_pipeline.train_dataset(info, batch_size=BATCH_SIZE, seed=seed, augment=None)

  def batches():
    for i, (images, labels) in enumerate(ds):
      step(images, tf.constant(i, tf.int64)).numpy()
      yield images, labels

  return batches


def _time_batches(iterator, num_batches):
  """Images/s over `num_batches` batches (counted, as ImageDataGenerator's last batch of
  an epoch is short)."""
  # Untimed first: the pipeline's parallel stages and prefetch buffer start empty and fill
  # up; timing starts once they run at their steady rate.
  for _ in range(min(SETTLE_BATCHES, num_batches)):
    next(iterator)
  count = 0
  start = time.perf_counter()
  for _ in range(num_batches):
    images, _ = next(iterator)
    count += len(images)
  return count / (time.perf_counter() - start)


@dataclasses.dataclass(frozen=True)
class Settings:
  """What `run` measures (the flags of the same names)."""
  image_dir: str = DEFAULT_IMAGE_DIR
  num_images: int = 10_000
  batches: int = 200  # timed per method per repeat
  repeats: int = 3
  seed: int = 0
  op_resampler: bool = False  # + OP_METHODS
  deterministic: bool = False  # + DETERMINISTIC_METHOD
  baselines: bool = True  # image_data_generator, tfdata_keras_layers, project_device
  stream: bool = True  # + STREAM_METHOD, STREAM_RAW_METHOD, and large_methods(large_size)
  large_size: int = DEFAULT_LARGE_SIZE  # px; 0: no rows at a larger stored size


def _methods(settings):
  names = METHODS if settings.baselines else ("project_host",)
  if settings.op_resampler:
    names += OP_METHODS if settings.baselines else OP_METHODS[:1]
  if settings.deterministic:
    names += (DETERMINISTIC_METHOD,)
  if settings.stream:
    names += (STREAM_METHOD, STREAM_RAW_METHOD)
    if settings.large_size:
      names += large_methods(settings.large_size)
  return names


def stream_ratios(median, large_size):
  """{"<streamed>_vs_<cached>": ratio of medians} for each size and format measured."""
  pairs = [("project_host", STREAM_METHOD), ("project_host", STREAM_RAW_METHOD)]
  if large_size:
    cached, *streamed = large_methods(large_size)
    pairs += [(cached, name) for name in streamed]
  return {f"{streamed}_vs_{cached}": median[streamed] / median[cached]
          for cached, streamed in pairs if streamed in median}


def run(settings=Settings(), log=None):
  """Returns {"images_per_s": {method: median}, "runs": {method: [per repeat]}, ...}."""
  s = settings
  files, class_names = list_images(s.image_dir, s.num_images)
  images, labels = decode_all(files)
  methods = _methods(s)
  large = s.stream and s.large_size and large_methods(s.large_size)
  with tempfile.TemporaryDirectory(prefix="bench_input_") as tmp:
    data_dir = os.path.join(tmp, "stored"), os.path.join(tmp, "large")
    raw_dir = os.path.join(tmp, "stored_raw"), os.path.join(tmp, "large_raw")
    for d in data_dir + raw_dir:
      os.mkdir(d)
    info = write_tfrecords(files, class_names, data_dir[0], images.shape[1:])
    if s.stream:
      raw_info = write_tfrecords(files, class_names, raw_dir[0], images.shape[1:],
                                 image_format="raw")
    if large:
      if log:
        log(f"writing {len(files)} records at {s.large_size} px")
      large_info = write_tfrecords(files, class_names, data_dir[1],
                                   (s.large_size, s.large_size, 3), resize=True)
      large_raw_info = write_tfrecords(files, class_names, raw_dir[1],
                                       (s.large_size, s.large_size, 3), resize=True,
                                       image_format="raw")
    # Datasets are only defined here; each is read only if its method is measured.
    generator = image_data_generator_batches(images, labels, s.seed)
    keras_layers = keras_layers_dataset(images, labels, s.seed)
    host = {"project_host": project_host_dataset(info, s.seed),
            "project_host_op": project_host_dataset(info, s.seed, "op"),
            DETERMINISTIC_METHOD: project_host_dataset(info, s.seed, deterministic=True),
            STREAM_METHOD: project_host_dataset(info, s.seed, cache=None)}
    if s.stream:
      host[STREAM_RAW_METHOD] = project_host_dataset(raw_info, s.seed, cache=None)
    if large:
      host[large[0]] = project_host_dataset(large_info, s.seed)
      host[large[1]] = project_host_dataset(large_info, s.seed, cache=None)
      host[large[2]] = project_host_dataset(large_raw_info, s.seed, cache=None)
    device = {"xla": project_device_batches(info, s.seed),
              "op": project_device_batches(info, s.seed, "op")}
    # A fresh iterator for every timing: a live tf.data iterator keeps working in the
    # background while the other methods are timed, and its banked batches would then be
    # counted at memory speed. The memory caches belong to the datasets and are kept, so a
    # new iterator reads decoded images, as epochs after the first do in training; the
    # streaming datasets have none and read their shards again.
    new_iterator = {
        "image_data_generator": lambda: iter(generator),  # synchronous: nothing runs ahead
        "tfdata_keras_layers": lambda: iter(keras_layers),
        "project_device": device["xla"],
        "project_device_op": device["op"],
        **{name: (lambda ds=ds: iter(ds)) for name, ds in host.items()},
    }
    # Warm-up: one epoch (fills the caches: the TFRecords are decoded here; and brings the
    # shards into the page cache) and a few more batches (traces and compiles functions).
    warmup = -(-s.num_images // BATCH_SIZE) + 5
    for name in methods:
      iterator = new_iterator[name]()
      for _ in range(warmup):
        next(iterator)
      del iterator

    def measure(name, _):
      # The iterator is dropped when this returns, which stops its background threads
      # before the next method runs.
      return _time_batches(new_iterator[name](), s.batches)

    runs = harness.repeat(methods, s.repeats, measure, log=log)
  median = harness.medians(runs)
  ratios = {}
  if s.baselines:
    ratios = {f"{name}_vs_{base}": median[name] / median[base]
              for name in ("project_host", "project_device") + (OP_METHODS if s.op_resampler
                                                                else ())
              for base in ("image_data_generator", "tfdata_keras_layers")}
  if s.deterministic:
    ratios[f"{DETERMINISTIC_METHOD}_vs_project_host"] = (
        median[DETERMINISTIC_METHOD] / median["project_host"])
  ratios.update(stream_ratios(median, s.large_size))
  result = {
      "images_per_s": {name: median[name] for name in METHODS if name in median},
      "runs": runs,
      "ratios": ratios,
      "settings": {**dataclasses.asdict(s), "image_dir": str(s.image_dir),
                   "image_shape": list(images.shape[1:]), "batch_size": BATCH_SIZE,
                   **harness.machine()},
  }
  if s.op_resampler:
    result["op_resampler"] = {name[:-len("_op")]: median[name] for name in OP_METHODS
                              if name in median}
  if s.deterministic:
    result["deterministic"] = {"project_host": median[DETERMINISTIC_METHOD]}
  if s.stream:
    result["stream"] = {name: median[name] for name in (STREAM_METHOD, STREAM_RAW_METHOD)}
    if large:
      result["stream"].update({name: median[name] for name in large})
  return result


def format_table(result):
  s = result["settings"]
  lines = harness.spread_table(
      result["runs"], label="method",
      heading=f"images/s (batch {BATCH_SIZE}, {s['batches']} batches x {s['repeats']} "
              f"repeats, {s['num_images']} images {'x'.join(map(str, s['image_shape']))}"
              + (f"; *_{s['large_size']}: stored at {s['large_size']} px"
                 if s["stream"] and s["large_size"] else "") + ")")
  lines += ["", *harness.ratio_lines(result["ratios"]), harness.machine_line(s)]
  return "\n".join(lines)


def define_flags(flag_values):
  fv = {"flag_values": flag_values}
  flags.DEFINE_string("image_dir", DEFAULT_IMAGE_DIR, "Class-per-folder images "
                      "(<class>/*.jpg).", **fv)
  flags.DEFINE_integer("num_images", 10_000, "Images read into memory and into TFRecords.",
                       lower_bound=1, **fv)
  flags.DEFINE_integer("batches", 200, f"Batches of {BATCH_SIZE} timed per method per repeat.",
                       lower_bound=1, **fv)
  flags.DEFINE_integer("seed", 0, "Seed of the shuffles and augmentations.", **fv)
  flags.DEFINE_boolean("op_resampler", False, "Also time the project methods with the "
                       "ImageProjectiveTransformV3 resampler.", **fv)
  flags.DEFINE_boolean("deterministic", False, "Also time project_host in a fixed order "
                       "(trainer --deterministic).", **fv)
  flags.DEFINE_boolean("baselines", True, "Time image_data_generator, tfdata_keras_layers "
                       "and project_device; --nobaselines: only the project_host rows.", **fv)
  flags.DEFINE_boolean("stream", True, f"Also time {STREAM_METHOD} and {STREAM_RAW_METHOD}: "
                       "project_host without a cache, reading JPEG and raw shards every epoch "
                       "(and the same at --large_size).", **fv)
  flags.DEFINE_integer("large_size", DEFAULT_LARGE_SIZE, "px: with --stream, also time "
                       "project_host cached and streamed on the images resized to this stored "
                       "size (0: not).", lower_bound=0, **fv)
  harness.define_flags(flag_values, repeats=3)


def main(argv, flag_values):
  harness.start(argv)
  fv = flag_values
  settings = Settings(**{f.name: fv[f.name].value for f in dataclasses.fields(Settings)})
  result = run(settings, harness.progress(fv.json))
  harness.emit(result, format_table, fv.json)


COMMAND = cli.Command("tools.bench_input", define_flags, main, tensorflow=True)

if __name__ == "__main__":
  COMMAND.run()
