"""Resident memory of a training run, at each epoch's end, beside the size of the decoded split;
and the trainer's peak memory against dataset size, per --cache mode.

    python -m tools.bench_memory --data_dir=DATA --epochs=3
    python -m tools.bench_memory --data_dir=... --json
    python -m tools.bench_memory --data_dir=... --cache=/tmp/c   # other flags go to the trainer

    # Peak RSS per dataset size and --cache mode, each child in a 1,400 MiB memory cgroup:
    python -m tools.bench_memory --sizes=2000,8000 --image_dir=/tmp/cifar10/train \
        --image_size=224 --build_dir=/tmp/bench_memory_data --caches=auto,memory \
        --memory_limit_mib=1400 --epochs=1 --steps_per_epoch=2

One run (--data_dir): runs `python -m trainer.main` (its default --cache unless a trainer flag
says otherwise) in a child process with a fresh --model_dir, follows the run through that
directory (trainer/workdir.py, polled every
POLL_S) and reads the child's /proc/<pid>/status when:

  built      tensorboard/ appears: TensorFlow imported, model and optimizer built, datasets
             defined, no epoch run yet (the baseline);
  epoch N    history.csv gains epoch N's row: after epoch N's training and validation;
  end        results.json appears (test split evaluated, model exported).

VmRSS is the memory resident then, VmHWM the peak so far; `peak` is the child's maximum RSS
from wait4 (what `/usr/bin/time -v` reports). The decoded train split is
examples x H x W x 3 bytes (uint8): what the train cache should hold. If the cache held
anything else, or grew across epochs, RSS after epoch 3 would exceed RSS after epoch 2.

Against size (--sizes or --data_dirs): one child per data directory and --cache mode (--caches),
in turn, each followed as above; per run: the trainer's own decision, the line it logs that
starts `--cache=<mode>: train ... decoded -> ...` (memory, streams), and its peak RSS, or the
`--cache=memory` refusal when the decoded splits exceed the budget (exit 1, one line: not
the kernel's exit 137). --sizes builds each data directory with the Beam job
(`python -m pipeline.build_tfrecords --source=image_dir --image_size=...`) from the first N
images of --image_dir taken round-robin over its classes (linked into a folder of their own);
--build_dir keeps them for the next run. --memory_limit_mib runs every child in a fresh memory
cgroup of that limit (root, cgroup v1 or v2: tools/cgroups.py), which the trainer reads to
size its budget: the way to have data larger than the budget on a machine with much RAM.
"""

import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time

from absl import flags

from tools import cli
from tools import harness

MIB = 2**20
# The trainer's one line about its caches (trainer/cache.py), from "--cache=" on.
DECISION = re.compile(r"--cache=\S*: train .* decoded -> .*")
CACHE_MODES = ("auto", "memory", "none")
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


def _last_line(path):
  with open(path, errors="replace") as f:
    return ([line.strip() for line in f if line.strip()] or ["(no output)"])[-1]


def decision(log_path):
  """The trainer's `--cache=...: train ... decoded -> ...` line in its log, or None."""
  with open(log_path, errors="replace") as f:
    for line in f:
      match = DECISION.search(line)
      if match:
        return match.group(0).strip()
  return None


def run_child(data_dir, model="simple", epochs=3, steps_per_epoch=0, extra_args=(), log=None,
              memory_limit=None):
  """One trainer child followed to its end, failing or not. memory_limit: bytes of a memory
  cgroup to run it in (None: none). Returns {"points", "peak", "returncode", "last_line",
  "decision", "command", "cgroup_peak" (with a limit)}."""
  from tools import cgroups
  with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
    model_dir, log_path = os.path.join(tmp, "run"), os.path.join(tmp, "train.log")
    command = [sys.executable, "-m", "trainer.main", f"--data_dir={data_dir}",
               f"--model_dir={model_dir}", f"--model={model}", f"--epochs={epochs}",
               f"--patience={epochs}", f"--steps_per_epoch={steps_per_epoch}", *extra_args]
    env = cli.trainer_env({"TF_CPP_MIN_LOG_LEVEL": "2"})
    with contextlib.ExitStack() as stack:
      cgroup = None
      if memory_limit:
        cgroup = stack.enter_context(cgroups.memory_cgroup(memory_limit))
      with open(log_path, "wb") as child_log:
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=child_log,
                                 stderr=subprocess.STDOUT, env=env,
                                 preexec_fn=cgroup.preexec if cgroup else None)
      try:
        points = follow(child, model_dir, log)
      except BaseException:  # Ctrl-C: no child left behind
        child.kill()
        child.wait()
        raise
      _, status, usage = os.wait4(child.pid, 0)
      child.returncode = os.waitstatus_to_exitcode(status)  # so that Popen does not wait again
      result = {"points": points, "peak": usage.ru_maxrss * 1024,  # kilobytes on Linux
                "returncode": child.returncode, "last_line": _last_line(log_path),
                "decision": decision(log_path), "command": " ".join(command)}
      if cgroup:
        result["cgroup_peak"] = cgroup.peak()
  return result


def run(data_dir, model="simple", epochs=3, steps_per_epoch=0, extra_args=(), log=None):
  """Returns {"points": [{"at", "rss", "hwm"}...], "peak": bytes, "decoded": {...}, ...}."""
  child = run_child(data_dir, model, epochs, steps_per_epoch, extra_args, log)
  if child["returncode"]:
    raise cli.ToolError(f"{child['command']} exited with {child['returncode']}: "
                        f"{child['last_line']}")
  points = child["points"]
  decoded = decoded_bytes(data_dir)
  by_name = {p["at"]: p for p in points}
  result = {
      "points": points,
      "peak": child["peak"],
      "decoded": decoded,
      "decision": child["decision"],
      "settings": {"data_dir": data_dir, "model": model, "epochs": epochs,
                   "steps_per_epoch": steps_per_epoch, "extra_args": list(extra_args),
                   "command": child["command"], **harness.machine()},
  }
  if "built" in by_name:
    result["peak_above_built"] = result["peak"] - by_name["built"]["rss"]
  if epochs >= 3 and "epoch 2" in by_name and "epoch 3" in by_name:
    result["epoch3_minus_epoch2"] = by_name["epoch 3"]["rss"] - by_name["epoch 2"]["rss"]
  return result


# --- peak memory against dataset size -------------------------------------------------------


def link_images(image_dir, num_images, out_dir):
  """A class-per-folder directory of symlinks to the first `num_images` images of
  `image_dir`, round-robin over its classes (tools.bench_input.list_images)."""
  from tools import bench_input
  files, class_names = bench_input.list_images(image_dir, num_images)
  for path, label in files:
    folder = os.path.join(out_dir, class_names[label])
    os.makedirs(folder, exist_ok=True)
    os.symlink(os.path.abspath(path), os.path.join(folder, path.name))
  return out_dir


def build_data(image_dir, num_images, image_size, build_dir, log=None):
  """The data directory of `num_images` images of `image_dir` stored at `image_size` px by
  the Beam job, under build_dir (reused if it is already there)."""
  name = f"{os.path.basename(os.path.normpath(image_dir))}_{num_images}_{image_size}px"
  data_dir = os.path.join(build_dir, name)
  from pipeline import features
  if os.path.exists(os.path.join(data_dir, features.INFO_FILE)):
    return data_dir
  images = link_images(image_dir, num_images, tempfile.mkdtemp(prefix="images_", dir=build_dir))
  command = [sys.executable, "-m", "pipeline.build_tfrecords", "--source=image_dir",
             f"--image_dir={images}", f"--output_dir={data_dir}", f"--image_size={image_size}"]
  if log:
    log(f"building {data_dir}: {' '.join(command)}")
  done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, env=cli.trainer_env(), text=True)
  if done.returncode:
    last = ([line for line in done.stdout.splitlines() if line.strip()] or ["(no output)"])[-1]
    raise cli.ToolError(f"{' '.join(command)} exited with {done.returncode}: {last}")
  return data_dir


def _short(decision_line):
  """'train -> memory, validation -> streams' of the trainer's decision line."""
  if not decision_line:
    return None
  match = re.search(r"train \S+ \S+ decoded -> ([^,;]+), validation \S+ \S+ -> ([^,;]+)",
                    decision_line)
  return f"train -> {match.group(1)}, validation -> {match.group(2)}" if match else None


def against_size(data_dirs, caches, *, model="simple", epochs=1, steps_per_epoch=2,
                 extra_args=(), memory_limit=None, log=None):
  """One trainer child per (data directory, --cache mode), in turn. Returns {"runs": [{
  "data_dir", "train_examples", "decoded", "cache", "outcome", "decision", "peak", ...}],
  "settings"}; outcome is "finished", "refused" (the --cache=memory error), "killed" (by
  the kernel: SIGKILL, as the OOM killer ends a process over its cgroup's limit) or
  "failed"."""
  from pipeline import dataset_info
  runs = []
  for data_dir in data_dirs:
    info = dataset_info.load(data_dir, check_files=False)
    for mode in caches:
      if log:
        log(f"{data_dir} --cache={mode}")
      child = run_child(data_dir, model, epochs, steps_per_epoch,
                        [f"--cache={mode}", *extra_args], memory_limit=memory_limit)
      refused = child["returncode"] == 1 and f"--cache={mode}: the decoded" in child["last_line"]
      code = child["returncode"]
      outcome = ("finished" if code == 0 else "refused" if refused
                 else "killed" if code in (-9, 137) else "failed")
      runs.append({
          "data_dir": data_dir, "train_examples": info.split("train").num_examples,
          "image_shape": list(info.image_shape or ()), "decoded": decoded_bytes(data_dir),
          "cache": mode, "outcome": outcome, "returncode": child["returncode"],
          "decision": child["decision"], "choice": _short(child["decision"]),
          "peak": child["peak"], "cgroup_peak": child.get("cgroup_peak"),
          "message": None if outcome == "finished" else child["last_line"],
          "command": child["command"]})
      if log:
        log(f"  {outcome}: {runs[-1]['choice'] or runs[-1]['message']}; "
            f"peak RSS {child['peak'] / MIB:,.0f} MiB")
  return {"runs": runs,
          "settings": {"caches": list(caches), "model": model, "epochs": epochs,
                       "steps_per_epoch": steps_per_epoch, "extra_args": list(extra_args),
                       "memory_limit": memory_limit, **harness.machine()}}


def format_size_table(result):
  s = result["settings"]
  limit = (f"each in a {s['memory_limit'] / MIB:,.0f} MiB memory cgroup"
           if s["memory_limit"] else "no memory limit")
  header = (f"{'train images':>12} {'decoded MiB':>11} {'cache':<7} {'peak RSS MiB':>12} "
            f"{'cgroup peak':>11}   trainer's decision ({s['model']}, {s['epochs']} epoch(s) "
            f"of {s['steps_per_epoch'] or 'all'} steps, {limit})")
  lines = [header]
  for r in result["runs"]:
    decoded = r["decoded"].get("train", 0) + r["decoded"].get("validation", 0)
    cgroup = f"{r['cgroup_peak'] / MIB:,.0f}" if r.get("cgroup_peak") else "-"
    what = (r["choice"] if r["outcome"] == "finished" else
            f"killed (exit {r['returncode']}) after: {r['choice']}" if r["outcome"] == "killed"
            else f"{r['outcome']}: {r['message']}")
    lines.append(f"{r['train_examples']:>12,} {decoded / MIB:>11,.0f} {r['cache']:<7} "
                 f"{r['peak'] / MIB:>12,.0f} {cgroup:>11}   {what}")
  lines.append("decoded: train + validation at the stored size (uint8)")
  lines.append(harness.machine_line(s))
  return "\n".join(lines)


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
  flags.DEFINE_string("data_dir", None, "A TFRecord data directory: one run, followed epoch "
                      "by epoch.", **fv)
  flags.DEFINE_string("model", "simple", "A trainer.models name.", **fv)
  flags.DEFINE_integer("epochs", 3, "Epochs to train (and --patience).", lower_bound=1, **fv)
  flags.DEFINE_integer("steps_per_epoch", 0, "0: full passes over train (what fills the "
                       "cache).", lower_bound=0, **fv)
  flags.DEFINE_list("sizes", [], "Peak memory against size: numbers of images of "
                    "--image_dir, each built into a data directory by the Beam job.", **fv)
  flags.DEFINE_string("image_dir", "/tmp/cifar10/train", "With --sizes: class-per-folder "
                      "images (<class>/*.jpg).", **fv)
  flags.DEFINE_integer("image_size", 224, "With --sizes: px the Beam job stores the images at "
                       "(--image_size of pipeline.build_tfrecords).", lower_bound=1, **fv)
  flags.DEFINE_string("build_dir", None, "With --sizes: where the data directories are built "
                      "and found again by the next run (default: a temporary directory).", **fv)
  flags.DEFINE_list("data_dirs", [], "Peak memory against size, on these data directories "
                    "(instead of --sizes).", **fv)
  flags.DEFINE_list("caches", ["auto", "memory"], "With --sizes or --data_dirs: the --cache "
                    f"modes to run for each size ({', '.join(CACHE_MODES)}, or a prefix).", **fv)
  flags.DEFINE_integer("memory_limit_mib", 0, "With --sizes or --data_dirs: run each trainer "
                       "in a memory cgroup of this many MiB (needs root; 0: none).",
                       lower_bound=0, **fv)
  harness.define_flags(flag_values)


def main(argv, flag_values):
  """argv[1:]: flags that are not this tool's, passed to trainer.main."""
  fv = flag_values
  log = harness.progress(fv.json)
  if bool(fv.sizes) + bool(fv.data_dirs) + bool(fv.data_dir) != 1:
    raise cli.ToolError("give one of --data_dir (one run), --sizes or --data_dirs (peak "
                        "memory against size)")
  problem = cli.check_trainer_args(argv[1:])  # a typo fails here, not in every child
  if problem:
    raise cli.ToolError(f"trainer flags: {problem}")
  if fv.data_dir:
    result = run(fv.data_dir, fv.model, fv.epochs, fv.steps_per_epoch, argv[1:], log)
    harness.emit(result, format_table, fv.json)
    return
  limit = fv.memory_limit_mib * MIB or None
  if limit:
    from tools import cgroups
    reason = cgroups.skip_reason()
    if reason:
      raise cli.ToolError(f"--memory_limit_mib: {reason}")
  with contextlib.ExitStack() as stack:
    data_dirs = list(fv.data_dirs)
    if fv.sizes:
      try:
        sizes = [int(n) for n in fv.sizes]
      except ValueError:
        raise cli.ToolError(f"--sizes={','.join(fv.sizes)}: numbers of images") from None
      build_dir = fv.build_dir or stack.enter_context(
          tempfile.TemporaryDirectory(prefix="bench_memory_data_"))
      os.makedirs(build_dir, exist_ok=True)
      data_dirs = [build_data(fv.image_dir, n, fv.image_size, build_dir, log) for n in sizes]
    result = against_size(data_dirs, fv.caches, model=fv.model, epochs=fv.epochs,
                          steps_per_epoch=fv.steps_per_epoch, extra_args=argv[1:],
                          memory_limit=limit, log=log)
  harness.emit(result, format_size_table, fv.json)


COMMAND = cli.Command("tools.bench_memory", define_flags, main, pass_through=True)

if __name__ == "__main__":
  COMMAND.run()
