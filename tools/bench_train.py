"""Train steps/s fed by the real TFRecord pipeline vs the same batches held in memory.

    python -m tools.bench_train --model=simple --data_dir=/work/runs/cifar10_data
    python -m tools.bench_train --model=basic --steps=60 --repeats=3 --json

Is the trainer input-bound? Both sides run the trainer's own code: the model, optimizer and
strategy of `trainer.train.build`, the looped step of `trainer.train.TrainSteps`, driven
by `trainer.steps.run_steps` (20 steps per tf.function call, as in training).

  pipeline  `trainer.train.distributed_train_data`: TFRecords -> parse -> decode -> memory
            cache -> shuffle -> batch -> augment -> prefetch, exactly as a run is fed
            (with --augment_on=device both sides augment inside the step instead).
  memory    the same `trainer.input_pipeline.train_dataset`, cut to its first
            `--memory_batches` batches, which are cached and repeated
            (`.take(K).cache().repeat()`): input costs ~0, so this is the step alone.

Steady state, as in epochs after the first: the warm-up reads one full epoch of the pipeline
(which decodes the TFRecords once, into the cache) and fills the memory side's cache, and
runs one untimed call of each side (tracing). Each timing starts a fresh iterator (a live
tf.data iterator keeps working in the background, and its banked batches would be counted
at memory speed), runs one untimed call, then times `--steps` steps. Both sides run in each
repeat, back to back, first one then the other first, so that changes in machine load hit
both; min / median / max over `--repeats`, and each repeat's own ratio. The goal (issue 4): pipeline steps/s within 5% of memory steps/s.

Without --data_dir the tool builds a small data directory from the repository's sample
(pipeline/sample_data/cifar10, 500 JPEGs) with the Beam job, in a temporary directory.
"""

import argparse
import contextlib
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO / "pipeline" / "sample_data" / "cifar10"
SIDES = ("pipeline", "memory")
TARGET = 0.95  # pipeline steps/s at least 95% of memory steps/s: "not input-bound"


def build_sample_data(out_dir):
  """The repository's sample JPEGs -> TFRecords in `out_dir`, with the real Beam job."""
  from pipeline import build_tfrecords
  config = build_tfrecords.JobConfig(source="image_dir", image_dir=str(SAMPLE_DIR),
                                     output_dir=str(out_dir), command="tools.bench_train")
  with contextlib.redirect_stdout(sys.stderr):  # its summary must not mix into --json
    result = build_tfrecords.run_job(config)
  if result.exit_code:
    raise SystemExit(f"building the sample data in {out_dir} failed")
  return str(out_dir)


def memory_train_data(strategy, info, config, num_batches):
  """The trainer's train batches, first `num_batches` of each input pipeline kept in memory
  and repeated: the same shapes, dtypes and distribution as the pipeline side."""
  import tensorflow as tf
  from trainer import augment as augment_lib
  from trainer import input_pipeline
  from trainer import train
  augment = augment_lib.AugmentConfig() if train.host_augmentation(config) else None

  def dataset_fn(input_context):
    ds = input_pipeline.train_dataset(
        info, batch_size=input_context.get_per_replica_batch_size(config.batch_size),
        input_context=input_context, seed=config.seed, augment=augment, cache=config.cache,
        image_size=config.image_size or None)
    return ds.take(num_batches).cache().repeat().prefetch(tf.data.AUTOTUNE)

  return strategy.distribute_datasets_from_function(dataset_fn)


def _time_steps(train_step, iterator, steps):
  """Steps/s of `steps` train steps, after one untimed call (fills the prefetch buffers)."""
  from trainer import steps as steps_lib
  steps_lib.run_steps(train_step, iterator, steps_lib.STEPS_PER_CALL)
  start = time.perf_counter()
  steps_lib.run_steps(train_step, iterator, steps)  # returns once the last step has finished
  return steps / (time.perf_counter() - start)


def run(data_dir, model="simple", steps=100, repeats=3, batch_size=128, memory_batches=50,
        augment=True, augment_on="host", log=None):
  """Returns {"steps_per_s": {side: median}, "runs": {side: [per repeat]}, "ratio", ...}."""
  from pipeline import dataset_info
  from trainer import config as config_lib
  from trainer import input_pipeline
  from trainer import steps as steps_lib
  from trainer import strategy as strategy_lib
  from trainer import train

  config = config_lib.Config(data_dir=data_dir, model_dir="", model=model,
                             batch_size=batch_size, augment=augment, augment_on=augment_on)
  info = dataset_info.load(data_dir)
  strategy = strategy_lib.make_strategy(config.strategy, config.cpu_replicas)
  model_, optimizers, _ = train.build(config, info, strategy)
  train_step = train.TrainSteps(model_, optimizers, strategy, config).for_epoch(0)
  data = {"pipeline": train.distributed_train_data(strategy, info, config, first_epoch=0),
          "memory": memory_train_data(strategy, info, config, memory_batches)}

  started = time.perf_counter()
  # Warm-up. Pipeline: one full epoch through one iterator, so its cache is complete (the
  # cache only keeps what it wrote once its input has run to the end); pulled without
  # training, which is not what is measured. Memory: its K batches. Then trace the step.
  epoch = input_pipeline.steps_per_epoch(info, config.batch_size)
  for side, count in (("pipeline", epoch + 1), ("memory", memory_batches + 1)):
    iterator = iter(data[side])
    for _ in range(count):
      next(iterator)
    steps_lib.run_steps(train_step, iterator, steps_lib.STEPS_PER_CALL)
    del iterator
  warmup_s = time.perf_counter() - started

  runs = {side: [] for side in SIDES}
  for r in range(repeats):
    # Alternate which side goes first, so that neither always runs right after the
    # other's background threads or on the same turn of a periodic load.
    for side in SIDES if r % 2 == 0 else SIDES[::-1]:
      iterator = iter(data[side])
      runs[side].append(_time_steps(train_step, iterator, steps))
      del iterator  # stops its background threads before the other side runs
    if log:
      log(f"repeat {r + 1}/{repeats}: " + ", ".join(
          f"{side} {runs[side][-1]:.2f} steps/s" for side in SIDES))
  median = {side: statistics.median(v) for side, v in runs.items()}
  return {
      "steps_per_s": median,
      "images_per_s": {side: v * batch_size for side, v in median.items()},
      "runs": runs,
      "ratio": median["pipeline"] / median["memory"],
      # Each repeat's own ratio (the two sides ran back to back): less hit by load that
      # changes between repeats than the ratio of medians.
      "paired_ratios": [p / m for p, m in zip(runs["pipeline"], runs["memory"])],
      "within_target": median["pipeline"] >= TARGET * median["memory"],
      "settings": {"data_dir": data_dir, "model": model, "batch_size": batch_size,
                   "steps": steps, "repeats": repeats, "memory_batches": memory_batches,
                   "augment": augment, "augment_on": augment_on, "train_examples": info.split("train").num_examples,
                   "replicas": strategy.num_replicas_in_sync, "warmup_s": round(warmup_s, 1),
                   "cpus": os.cpu_count(), "load_average": list(os.getloadavg())},
  }


def format_table(result):
  s = result["settings"]
  lines = [f"{'side':<10} {'min':>8} {'median':>8} {'max':>8}   train steps/s ({s['model']}, "
           f"batch {s['batch_size']}, {s['steps']} steps x {s['repeats']} repeats, "
           f"{s['replicas']} replica(s), augment={s['augment']}, augment_on={s['augment_on']})"]
  for side, values in result["runs"].items():
    lines.append(f"{side:<10} {min(values):>8.2f} {statistics.median(values):>8.2f} "
                 f"{max(values):>8.2f}   ({result['images_per_s'][side]:,.0f} images/s)")
  lines.append(f"pipeline / memory: {result['ratio']:.3f} "
               f"({'within' if result['within_target'] else 'NOT within'} "
               f"{100 * (1 - TARGET):.0f}% of memory); per repeat: "
               + ", ".join(f"{r:.3f}" for r in result["paired_ratios"]))
  lines.append(f"data: {s['data_dir']} ({s['train_examples']} train examples); "
               f"warm-up {s['warmup_s']} s; load average at the end (1, 5, 15 min): "
               f"{', '.join(f'{v:.2f}' for v in s['load_average'])}")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="simple", help="a trainer.models name")
  parser.add_argument("--data_dir", default="",
                      help="a TFRecord data directory (pipeline.build_tfrecords); default: "
                           "build one from pipeline/sample_data/cifar10 in a temp dir")
  parser.add_argument("--steps", type=int, default=100, help="train steps timed per side "
                      "per repeat")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--memory_batches", type=int, default=50,
                      help="batches the memory side holds and repeats")
  parser.add_argument("--noaugment", dest="augment", action="store_false",
                      help="train without augmentation (as --noaugment in trainer.main)")
  parser.add_argument("--augment_on", choices=("host", "device"), default="host",
                      help="where augmentation runs (as --augment_on in trainer.main): "
                           "in tf.data, or inside the train step on both sides")
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  args = parser.parse_args(argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  log = None if args.json else lambda line: print(line, file=sys.stderr, flush=True)
  kwargs = dict(model=args.model, steps=args.steps, repeats=args.repeats,
                batch_size=args.batch_size, memory_batches=args.memory_batches,
                augment=args.augment, augment_on=args.augment_on, log=log)
  if args.data_dir:
    result = run(args.data_dir, **kwargs)
  else:
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
      result = run(build_sample_data(os.path.join(tmp, "data")), **kwargs)
  print(json.dumps(result) if args.json else format_table(result))


if __name__ == "__main__":
  main()
