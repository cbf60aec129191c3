"""Train steps/s of a trainer held to one core, fed by its own host vs by a tf.data service.

    python -m tools.bench_data_service               # simple at 96 px from 224-px records
    python -m tools.bench_data_service --model=basic --train_image_size=0 --image_size=96

When the host's CPUs cannot keep up with decoding and augmenting, `--data_service` moves that
work to other machines. This measures what it buys where the trainer's process has one core
(pinned with sched_setaffinity, as `taskset -c 0` would) and the service's worker the other:

  host     the trainer's own input pipeline, on the trainer's core (as without the service).
  service  the same pipeline on one tf.data service worker pinned to the other core
           (tools.launch_data_service), batches sent to the trainer over gRPC on 127.0.0.1.
  memory   batches held in memory (`.take(K).cache().repeat()`): input costs ~0, so this is
           the step alone, the most any input can reach. service / memory is the service's
           overhead where the input is not the bottleneck.

Every side is a fresh trainer process on core 0 running the trainer's own code (the model,
optimizer and looped train step of trainer.train, `trainer.train.distributed_train_data` with
and without --data_service); each times `--steps` steps after two untimed calls (tracing,
filling buffers). The sides take turns within a repeat, in a rotating order; min / median /
max over `--repeats`. `--cache=none` (the default) streams and decodes every epoch, as data
larger than memory does; `--cache=auto` lets the host side cache decoded images (the service
never caches: trainer/data_service.py).

Without --data_dir the tool builds one from the repository's sample (500 JPEGs) with the Beam
job, stored at --image_size (224 px: photos larger than the trainer's size, which the input
decodes at full size and resizes, as path-listed photos are), in a temporary directory. Needs Linux (sched_setaffinity) and at
least 2 CPUs.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import flags

from tools import bench_train
from tools import cli
from tools import harness
from tools import launch_local

SIDES = ("host", "service", "memory")
TRAINER_CPU, WORKER_CPU = 0, 1
MEMORY_BATCHES = 8  # the memory side's batches (filled by the warm-up's 10 steps)
WARMUP_STEPS = 5  # per untimed call; two calls
RESULT = "bench_data_service result "


def _pinned(cpu):
  return lambda: os.sched_setaffinity(0, {cpu})


def build_data(out_dir, image_size):
  """The sample JPEGs stored at image_size px (the Beam job's --image_size)."""
  from pipeline import build_tfrecords
  config = build_tfrecords.JobConfig(
      source="image_dir", image_dir=str(bench_train.SAMPLE_DIR), output_dir=str(out_dir),
      image_size=image_size, command="tools.bench_data_service")
  with open(os.devnull, "w") as quiet:
    import contextlib  # pylint: disable=g-import-not-at-top
    with contextlib.redirect_stdout(quiet):
      result = build_tfrecords.run_job(config)
  if result.exit_code:
    raise cli.ToolError(f"building the sample data in {out_dir} failed")
  return str(out_dir)


def measure(side, *, data_dir, model, steps, batch_size, cache, service, run_id,
            image_size=0):
  """Steps/s of one side, in this process (which the parent has pinned to one core)."""
  from pipeline import dataset_info
  from trainer import config as config_lib
  from trainer import steps as steps_lib
  from trainer import strategy as strategy_lib
  from trainer import train

  config = config_lib.Config(
      data_dir=data_dir, model_dir=f"bench_data_service-{run_id}", model=model,
      batch_size=batch_size, cache=cache, image_size=image_size,
      data_service=service if side == "service" else "")
  info = dataset_info.load(data_dir)
  strategy = strategy_lib.make_strategy("one_device")
  model_, optimizers, _ = train.build(config, info, strategy)
  train_step = train.TrainSteps(model_, optimizers, strategy, config).for_epoch(0)
  caches = train.plan_caches(config, info, strategy)
  if side == "memory":
    data = bench_train.memory_train_data(strategy, info, config, MEMORY_BATCHES, caches)
  else:
    data = train.distributed_train_data(strategy, info, config, 0, caches)
  iterator = iter(data)
  for _ in range(2):  # tracing, then buffers and (memory) its cache filled
    steps_lib.run_steps(train_step, iterator, WARMUP_STEPS)
  start = time.perf_counter()
  steps_lib.run_steps(train_step, iterator, steps)
  return steps / (time.perf_counter() - start)


def _child(side, args):
  """Runs one side in a fresh process pinned to TRAINER_CPU; returns its steps/s."""
  command = [sys.executable, "-m", "tools.bench_data_service", f"--measure={side}", *args]
  result = subprocess.run(command, env=cli.trainer_env({"TF_CPP_MIN_LOG_LEVEL": "2"}),
                          capture_output=True, text=True, preexec_fn=_pinned(TRAINER_CPU))
  found = [l for l in result.stdout.splitlines() if l.startswith(RESULT)]
  if result.returncode or not found:
    raise cli.ToolError(f"the {side} side failed (exit {result.returncode}): "
                        + " ".join(result.stderr.strip().splitlines()[-3:]))
  return json.loads(found[-1][len(RESULT):])["steps_per_s"]


def _start_service():
  """tools.launch_data_service with one worker, pinned to WORKER_CPU; (process, address)."""
  process = subprocess.Popen(
      [sys.executable, "-m", "tools.launch_data_service", "--workers=1"],
      env=cli.trainer_env({"TF_CPP_MIN_LOG_LEVEL": "2"}), stdin=subprocess.DEVNULL,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
      preexec_fn=_pinned(WORKER_CPU))
  deadline = time.monotonic() + 180
  for line in process.stdout:
    if "] ready: --data_service=" in line:
      address = line.split("--data_service=")[1].split()[0]
      # Keep reading its output, so that its pipe never fills and blocks it.
      import threading  # pylint: disable=g-import-not-at-top
      threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()
      return process, address
    if time.monotonic() > deadline:
      break
  launch_local.stop([process], 5)
  raise cli.ToolError("tools.launch_data_service did not start")


def run(data_dir, *, model="simple", steps=40, repeats=3, batch_size=64, cache="none",
        train_image_size=96, log=None):
  if len(os.sched_getaffinity(0)) < 2:
    raise cli.ToolError("needs 2 CPUs: one for the trainer, one for the service worker")
  service, address = _start_service()
  try:
    args = [f"--data_dir={data_dir}", f"--model={model}", f"--steps={steps}",
            f"--batch_size={batch_size}", f"--cache={cache}", f"--service={address}",
            f"--train_image_size={train_image_size}"]
    runs = harness.repeat(
        SIDES, repeats, lambda side, r: _child(side, [*args, f"--run_id={side}-{r}"]),
        order=lambda r: SIDES[r % 3:] + SIDES[:r % 3], log=log, spec=".2f", unit=" steps/s")
  finally:
    launch_local.stop([service], 10)
  from pipeline import dataset_info  # pylint: disable=g-import-not-at-top
  info = dataset_info.load(data_dir)
  median = harness.medians(runs)
  return {
      "steps_per_s": median,
      "images_per_s": {side: v * batch_size for side, v in median.items()},
      "runs": runs,
      "ratios": {"service / host": median["service"] / median["host"],
                 "service / memory": median["service"] / median["memory"],
                 "host / memory": median["host"] / median["memory"]},
      "settings": {"data_dir": data_dir, "model": model, "batch_size": batch_size,
                   "train_image_size": train_image_size,
                   "steps": steps, "repeats": repeats, "cache": cache,
                   "image_shape": list(info.image_shape or ()),
                   "train_examples": info.split("train").num_examples,
                   "trainer_cpu": TRAINER_CPU, "worker_cpu": WORKER_CPU, **harness.machine()},
  }


def format_table(result):
  s = result["settings"]
  stored = "x".join(map(str, s["image_shape"][:2])) or "mixed"
  size = f"{s['train_image_size']} px from {stored}" if s["train_image_size"] else stored
  lines = harness.spread_table(
      result["runs"], label="side", spec=".2f",
      heading=f"train steps/s ({s['model']} at {size} px, batch {s['batch_size']}, "
              f"{s['steps']} steps x {s['repeats']} repeats; trainer on CPU "
              f"{s['trainer_cpu']}, service worker on CPU {s['worker_cpu']}, "
              f"--cache={s['cache']})",
      notes={side: f"({v:,.0f} images/s)" for side, v in result["images_per_s"].items()})
  lines += harness.ratio_lines(result["ratios"])
  lines.append(f"data: {s['data_dir']} ({s['train_examples']} train examples)")
  lines.append(harness.machine_line(s))
  return "\n".join(lines)


def define_flags(flag_values):
  fv = {"flag_values": flag_values}
  flags.DEFINE_string("model", "simple", "A trainer.models name.", **fv)
  flags.DEFINE_string("data_dir", "", "A TFRecord data directory; default: the sample, built "
                      "at --image_size in a temp dir.", **fv)
  flags.DEFINE_integer("image_size", 224, "Stored size of the default data (px).",
                       lower_bound=8, **fv)
  flags.DEFINE_integer("train_image_size", 96, "The trainer's --image_size: images are "
                       "decoded at the stored size, then resized to this (0: the stored "
                       "size).", lower_bound=0, **fv)
  flags.DEFINE_integer("steps", 40, "Train steps timed per side per repeat.", lower_bound=1,
                       **fv)
  flags.DEFINE_integer("batch_size", 64, "Batch size.", lower_bound=1, **fv)
  flags.DEFINE_string("cache", "none", "The trainer's --cache for the host side (none: "
                      "decode every epoch, as data larger than memory).", **fv)
  flags.DEFINE_enum("measure", None, SIDES, "Internal: measure one side in this process.",
                    **fv)
  flags.DEFINE_string("service", "", "Internal: the service address for --measure.", **fv)
  flags.DEFINE_string("run_id", "0", "Internal: names the service job of --measure.", **fv)
  harness.define_flags(flag_values, repeats=3)


def main(argv, flag_values):
  harness.start(argv)
  fv = flag_values
  if fv.measure:
    rate = measure(fv.measure, data_dir=fv.data_dir, model=fv.model, steps=fv.steps,
                   batch_size=fv.batch_size, cache=fv.cache, service=fv.service,
                   run_id=fv.run_id, image_size=fv.train_image_size)
    print(RESULT + json.dumps({"steps_per_s": rate}), flush=True)
    return 0
  kwargs = dict(model=fv.model, steps=fv.steps, repeats=fv.repeats, batch_size=fv.batch_size,
                cache=fv.cache, train_image_size=fv.train_image_size,
                log=harness.progress(fv.json))
  if fv.data_dir:
    result = run(fv.data_dir, **kwargs)
  else:
    with tempfile.TemporaryDirectory(prefix="bench_data_service_") as tmp:
      result = run(build_data(os.path.join(tmp, "data"), fv.image_size), **kwargs)
  harness.emit(result, format_table, fv.json)
  return 0


COMMAND = cli.Command("tools.bench_data_service", define_flags, main, tensorflow=True)

if __name__ == "__main__":
  COMMAND.run()
