"""Resident memory of a training run, at each epoch's end, beside the size of the decoded split.

    python -m tools.bench_memory --data_dir=/work/runs/cifar10_data --epochs=3
    python -m tools.bench_memory --data_dir=... --json
    python -m tools.bench_memory --data_dir=... --cache=/tmp/c   # other flags go to the trainer

Runs `python -m trainer.main` (--cache=auto, the default) in a child process with a fresh
--model_dir, follows the run through that directory (trainer/workdir.py, polled every
POLL_S) and reads the child's /proc/<pid>/status when:

  built      tensorboard/ appears: TensorFlow imported, model and optimizer built, datasets
             defined, no epoch run yet (the baseline);
  epoch N    history.csv gains epoch N's row: after epoch N's training and validation;
  end        results.json appears (test split evaluated, model exported).

VmRSS is the memory resident then, VmHWM the peak so far; `peak` is the child's maximum RSS
from wait4 (what `/usr/bin/time -v` reports). The decoded train split is
examples x H x W x 3 bytes (uint8): what the train cache should hold. If the cache held
anything else, or grew across epochs, RSS after epoch 3 would exceed RSS after epoch 2.
"""

import os
import subprocess
import sys
import tempfile
import time

from absl import flags

from tools import cli
from tools import harness

MIB = 2**20
POLL_S = 0.02  # seconds between looks at the run directory: well under a tiny run's epoch


def _status(pid):
  """{"rss": bytes, "hwm": bytes} of a live process, from /proc/<pid>/status ({} once it has
  exited)."""
  out = {}
  try:
    with open(f"/proc/{pid}/status") as f:
      for line in f:
        if line.startswith(("VmRSS:", "VmHWM:")):
          out["rss" if line.startswith("VmRSS") else "hwm"] = int(line.split()[1]) * 1024
  except FileNotFoundError:
    pass
  return out


def decoded_bytes(data_dir):
  """Bytes of each split decoded to uint8 pixels: {split: bytes}."""
  from pipeline import dataset_info
  info = dataset_info.load(data_dir, check_files=False)
  height, width, channels = info.image_shape
  return {name: split.num_examples * height * width * channels
          for name, split in info.splits.items()}


def _running(pid):
  """Whether the child still runs, without reaping it (wait4 reads its peak RSS after)."""
  return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None


def follow(child, model_dir, log=None):
  """Samples the child's memory as its run directory moves on; returns the points
  [{"at", "rss", "hwm"}], in order, until the child exits."""
  from trainer import workdir
  points, epochs_seen, built, ended = [], 0, False, False

  def sample(at):
    status = _status(child.pid)
    if status:  # a child that has already exited has no memory left to read
      points.append({"at": at, **status})
      if log:
        log(f"{at}: rss {status['rss'] / MIB:,.0f} MiB, "
            f"peak so far {status['hwm'] / MIB:,.0f} MiB")

  while not ended:
    running = _running(child.pid)
    if not built and workdir.training_started(model_dir):
      built = True
      sample("built")
    for row in workdir.read_history(model_dir)[epochs_seen:]:
      epochs_seen += 1
      sample(f"epoch {row['epoch']}")
    if workdir.read_results(model_dir) is not None:
      ended = True
      sample("end")
    if not running:
      break
    time.sleep(POLL_S)
  return points


def run(data_dir, model="simple", epochs=3, steps_per_epoch=0, extra_args=(), log=None):
  """Returns {"points": [{"at", "rss", "hwm"}...], "peak": bytes, "decoded": {...}, ...}."""
  with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
    model_dir, log_path = os.path.join(tmp, "run"), os.path.join(tmp, "train.log")
    command = [sys.executable, "-m", "trainer.main", f"--data_dir={data_dir}",
               f"--model_dir={model_dir}", f"--model={model}", f"--epochs={epochs}",
               f"--patience={epochs}", f"--steps_per_epoch={steps_per_epoch}", *extra_args]
    env = cli.trainer_env({"TF_CPP_MIN_LOG_LEVEL": "2"})
    with open(log_path, "wb") as child_log:
      child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=child_log,
                               stderr=subprocess.STDOUT, env=env)
    try:
      points = follow(child, model_dir, log)
    except BaseException:  # Ctrl-C: no child left behind
      child.kill()
      raise
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)  # so that Popen does not wait again
    if child.returncode:
      with open(log_path, errors="replace") as f:
        last = ([line.strip() for line in f if line.strip()] or ["(no output)"])[-1]
      raise cli.ToolError(f"{' '.join(command)} exited with {child.returncode}: {last}")
  decoded = decoded_bytes(data_dir)
  by_name = {p["at"]: p for p in points}
  result = {
      "points": points,
      "peak": usage.ru_maxrss * 1024,  # kilobytes on Linux
      "decoded": decoded,
      "settings": {"data_dir": data_dir, "model": model, "epochs": epochs,
                   "steps_per_epoch": steps_per_epoch, "extra_args": list(extra_args),
                   "command": " ".join(command), **harness.machine()},
  }
  if "built" in by_name:
    result["peak_above_built"] = result["peak"] - by_name["built"]["rss"]
  if epochs >= 3 and "epoch 2" in by_name and "epoch 3" in by_name:
    result["epoch3_minus_epoch2"] = by_name["epoch 3"]["rss"] - by_name["epoch 2"]["rss"]
  return result


def format_table(result):
  s = result["settings"]
  lines = [f"{'at':<10} {'rss MiB':>9} {'peak so far MiB':>16}   ({s['model']}, "
           f"{s['epochs']} epochs, {' '.join(s['extra_args']) or 'in-memory cache'})"]
  for p in result["points"]:
    lines.append(f"{p['at']:<10} {p['rss'] / MIB:>9,.0f} {p['hwm'] / MIB:>16,.0f}")
  lines.append(f"peak RSS (wait4): {result['peak'] / MIB:,.0f} MiB")
  if "peak_above_built" in result:
    lines.append(f"peak above the 'built' baseline: {result['peak_above_built'] / MIB:,.0f} MiB")
  if "epoch3_minus_epoch2" in result:
    lines.append(f"rss after epoch 3 minus after epoch 2: "
                 f"{result['epoch3_minus_epoch2'] / MIB:+,.1f} MiB")
  lines.append("decoded splits (uint8): " + ", ".join(
      f"{split} {n / MIB:,.0f} MiB" for split, n in result["decoded"].items()))
  lines.append(harness.machine_line(s))
  return "\n".join(lines)


def define_flags(flag_values):
  fv = {"flag_values": flag_values}
  flags.DEFINE_string("data_dir", None, "A TFRecord data directory.", **fv)
  flags.DEFINE_string("model", "simple", "A trainer.models name.", **fv)
  flags.DEFINE_integer("epochs", 3, "Epochs to train (and --patience).", lower_bound=1, **fv)
  flags.DEFINE_integer("steps_per_epoch", 0, "0: full passes over train (what fills the "
                       "cache).", lower_bound=0, **fv)
  harness.define_flags(flag_values)
  flags.mark_flag_as_required("data_dir", flag_values=flag_values)


def main(argv, flag_values):
  """argv[1:]: flags that are not this tool's, passed to trainer.main."""
  fv = flag_values
  result = run(fv.data_dir, fv.model, fv.epochs, fv.steps_per_epoch, argv[1:],
               harness.progress(fv.json))
  harness.emit(result, format_table, fv.json)


COMMAND = cli.Command("tools.bench_memory", define_flags, main, pass_through=True)

if __name__ == "__main__":
  COMMAND.run()
