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
both; min / median / max over `--repeats`, and each repeat's own ratio. The goal: pipeline
steps/s within 5% of memory steps/s. `trained_steps` in the output counts the optimizer
steps of every timing: each side trains `--steps` steps of the same train step.

Without --data_dir the tool builds a small data directory from the repository's sample
(pipeline/sample_data/cifar10, 500 JPEGs) with the Beam job, in a temporary directory.
"""

import contextlib
import os
import pathlib
import sys
import tempfile
import time

from absl import flags

from tools import cli
from tools import harness

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
    raise cli.ToolError(f"building the sample data in {out_dir} failed")
  return str(out_dir)


def memory_train_data(strategy, info, config, num_batches, caches):
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
        input_context=input_context, seed=config.seed, augment=augment, cache=caches.train,
        image_size=config.image_size or None)
    return ds.take(num_batches).cache().repeat().prefetch(tf.data.AUTOTUNE)

  return strategy.distribute_datasets_from_function(dataset_fn)


def _time_steps(train_step, iterator, steps, iterations):
  """(steps/s, optimizer steps taken) of `steps` train steps, after one untimed call (fills
  the prefetch buffers); `iterations` is the optimizer's step counter."""
  from trainer import steps as steps_lib
  steps_lib.run_steps(train_step, iterator, steps_lib.STEPS_PER_CALL)
  before = int(iterations.numpy())
  start = time.perf_counter()
  steps_lib.run_steps(train_step, iterator, steps)  # returns once the last step has finished
  seconds = time.perf_counter() - start
  return steps / seconds, int(iterations.numpy()) - before


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
  caches = train.plan_caches(config, info, strategy)  # as a run with this --cache (auto)
  data = {"pipeline": train.distributed_train_data(strategy, info, config, 0, caches),
          "memory": memory_train_data(strategy, info, config, memory_batches, caches)}

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

  trained = {side: [] for side in SIDES}  # optimizer steps each timing took: all `steps`

  def measure(side, _):
    # The iterator is dropped when this returns, which stops its background threads before
    # the other side runs.
    rate, taken = _time_steps(train_step, iter(data[side]), steps,
                              optimizers["main"].iterations)
    trained[side].append(taken)
    return rate

  # Alternate which side goes first, so that neither always runs right after the other's
  # background threads or on the same turn of a periodic load.
  runs = harness.repeat(SIDES, repeats, measure,
                        order=lambda r: SIDES if r % 2 == 0 else SIDES[::-1],
                        log=log, spec=".2f", unit=" steps/s")
  median = harness.medians(runs)
  return {
      "steps_per_s": median,
      "images_per_s": {side: v * batch_size for side, v in median.items()},
      "runs": runs,
      "trained_steps": trained,
      "ratio": median["pipeline"] / median["memory"],
      # Each repeat's own ratio (the two sides ran back to back): less hit by load that
      # changes between repeats than the ratio of medians.
      "paired_ratios": [p / m for p, m in zip(runs["pipeline"], runs["memory"])],
      "within_target": median["pipeline"] >= TARGET * median["memory"],
      "settings": {"data_dir": data_dir, "model": model, "batch_size": batch_size,
                   "steps": steps, "repeats": repeats, "memory_batches": memory_batches,
                   "augment": augment, "augment_on": augment_on,
                   "train_examples": info.split("train").num_examples,
                   "replicas": strategy.num_replicas_in_sync, "warmup_s": round(warmup_s, 1),
                   **harness.machine()},
  }


def format_table(result):
  s = result["settings"]
  lines = harness.spread_table(
      result["runs"], label="side", spec=".2f",
      heading=f"train steps/s ({s['model']}, batch {s['batch_size']}, {s['steps']} steps x "
              f"{s['repeats']} repeats, {s['replicas']} replica(s), augment={s['augment']}, "
              f"augment_on={s['augment_on']})",
      notes={side: f"({v:,.0f} images/s)" for side, v in result["images_per_s"].items()})
  lines.append(f"pipeline / memory: {result['ratio']:.3f} "
               f"({'within' if result['within_target'] else 'NOT within'} "
               f"{100 * (1 - TARGET):.0f}% of memory); per repeat: "
               + ", ".join(f"{r:.3f}" for r in result["paired_ratios"]))
  lines.append(f"data: {s['data_dir']} ({s['train_examples']} train examples); "
               f"warm-up {s['warmup_s']} s")
  lines.append(harness.machine_line(s))
  return "\n".join(lines)


def define_flags(flag_values):
  fv = {"flag_values": flag_values}
  flags.DEFINE_string("model", "simple", "A trainer.models name.", **fv)
  flags.DEFINE_string("data_dir", "", "A TFRecord data directory (pipeline.build_tfrecords); "
                      "default: build one from pipeline/sample_data/cifar10 in a temp dir.", **fv)
  flags.DEFINE_integer("steps", 100, "Train steps timed per side per repeat.", lower_bound=1,
                       **fv)
  flags.DEFINE_integer("batch_size", 128, "Global batch size.", lower_bound=1, **fv)
  flags.DEFINE_integer("memory_batches", 50, "Batches the memory side holds and repeats.",
                       lower_bound=1, **fv)
  flags.DEFINE_boolean("augment", True, "Train with augmentation (--noaugment: without, as in "
                       "trainer.main).", **fv)
  flags.DEFINE_enum("augment_on", "host", ["host", "device"], "Where augmentation runs (as "
                    "--augment_on in trainer.main): in tf.data, or inside the train step on "
                    "both sides.", **fv)
  harness.define_flags(flag_values, repeats=3)


def main(argv, flag_values):
  harness.start(argv)
  fv = flag_values
  kwargs = dict(model=fv.model, steps=fv.steps, repeats=fv.repeats, batch_size=fv.batch_size,
                memory_batches=fv.memory_batches, augment=fv.augment, augment_on=fv.augment_on,
                log=harness.progress(fv.json))
  if fv.data_dir:
    result = run(fv.data_dir, **kwargs)
  else:
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
      result = run(build_sample_data(os.path.join(tmp, "data")), **kwargs)
  harness.emit(result, format_table, fv.json)


COMMAND = cli.Command("tools.bench_train", define_flags, main, tensorflow=True)

if __name__ == "__main__":
  COMMAND.run()
