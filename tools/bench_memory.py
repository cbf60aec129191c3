"""Resident memory of a training run, at each epoch's end, beside the size of the decoded split.

    python -m tools.bench_memory --data_dir=/work/runs/cifar10_data --epochs=3
    python -m tools.bench_memory --data_dir=... --json

Runs `python -m trainer.main` (in-memory cache, the default) in a child process, follows its
log, and reads the child's /proc/<pid>/status at:

  built      the "training <model> (...)" line: TensorFlow imported, model and optimizer
             built, datasets defined, no epoch run yet (the baseline);
  epoch N    each "epoch N/M" line: after epoch N's training and validation;
  end        the final "test_loss" line (test split evaluated, model exported).

VmRSS is the memory resident then, VmHWM the peak so far; `peak` is the child's maximum RSS
from wait4 (what `/usr/bin/time -v` reports). The decoded train split is
examples x H x W x 3 bytes (uint8): what the train cache should hold. If the cache held
anything else, or grew across epochs, RSS after epoch 3 would exceed RSS after epoch 2.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

MIB = 2**20
_EPOCH = re.compile(r"epoch (\d+)/\d+:")


def _status(pid):
  """{"rss": bytes, "hwm": bytes} of a live process, from /proc/<pid>/status."""
  out = {}
  with open(f"/proc/{pid}/status") as f:
    for line in f:
      if line.startswith(("VmRSS:", "VmHWM:")):
        out["rss" if line.startswith("VmRSS") else "hwm"] = int(line.split()[1]) * 1024
  return out


def decoded_bytes(data_dir):
  """Bytes of each split decoded to uint8 pixels: {split: bytes}."""
  with open(os.path.join(data_dir, "dataset_info.json")) as f:
    info = json.load(f)
  height, width, channels = info["image_shape"]
  return {split: s["num_examples"] * height * width * channels
          for split, s in info["splits"].items()}


def run(data_dir, model="simple", epochs=3, steps_per_epoch=0, extra_args=(), log=None):
  """Returns {"points": [{"at", "rss", "hwm"}...], "peak": bytes, "decoded": {...}, ...}."""
  points = []
  with tempfile.TemporaryDirectory(prefix="bench_memory_") as model_dir:
    command = [sys.executable, "-m", "trainer.main", f"--data_dir={data_dir}",
               f"--model_dir={model_dir}", f"--model={model}", f"--epochs={epochs}",
               f"--patience={epochs}", f"--steps_per_epoch={steps_per_epoch}", *extra_args]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, env=env)
    for line in child.stdout:
      at = None
      match = _EPOCH.search(line)
      if match:
        at = f"epoch {match.group(1)}"
      elif "training " in line and " parameters)" in line:
        at = "built"
      elif "test_loss" in line:
        at = "end"
      if at:
        points.append({"at": at, **_status(child.pid)})
        if log:
          log(f"{at}: rss {points[-1]['rss'] / MIB:,.0f} MiB, "
              f"peak so far {points[-1]['hwm'] / MIB:,.0f} MiB")
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
  if child.returncode:
    raise SystemExit(f"{' '.join(command)} exited with {child.returncode}")
  decoded = decoded_bytes(data_dir)
  by_name = {p["at"]: p for p in points}
  result = {
      "points": points,
      "peak": usage.ru_maxrss * 1024,  # kilobytes on Linux
      "decoded": decoded,
      "settings": {"data_dir": data_dir, "model": model, "epochs": epochs,
                   "steps_per_epoch": steps_per_epoch, "extra_args": list(extra_args),
                   "command": " ".join(command),
                   "cpus": os.cpu_count(), "load_average": list(os.getloadavg())},
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
  lines.append(f"load average at the end (1, 5, 15 min): "
               f"{', '.join(f'{v:.2f}' for v in s['load_average'])}")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data_dir", required=True, help="a TFRecord data directory")
  parser.add_argument("--model", default="simple")
  parser.add_argument("--epochs", type=int, default=3)
  parser.add_argument("--steps_per_epoch", type=int, default=0,
                      help="0: full passes over train (what fills the cache)")
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  args, extra = parser.parse_known_args(argv)  # the rest go to trainer.main
  log = None if args.json else lambda line: print(line, file=sys.stderr, flush=True)
  result = run(args.data_dir, args.model, args.epochs, args.steps_per_epoch, extra, log)
  print(json.dumps(result) if args.json else format_table(result))


if __name__ == "__main__":
  main()
