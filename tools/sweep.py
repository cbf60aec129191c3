r"""Runs a grid of `python -m trainer.main` runs, one model_dir each, resumably; collects results.

    python -m tools.sweep --config=configs/NAME.sweep --output_dir=DIR [--dry_run] [TRAINER FLAGS]
    python -m tools.sweep --config=configs/NAME.sweep --output_dir=DIR --data_dir=DATA
    python -m tools.sweep --config=... --output_dir=DIR --dry_run   # prints the commands only

(--out_dir=DIR, the old spelling of --output_dir, still works.)

The config file, one item a line:

    # Comment lines and blank lines are ignored; the header comment says what it reproduces.
    --flagfile=configs/simple.flags     # base trainer flags: any line starting with --
    --epochs=20
    sweep --optimizer adam sgd rmsprop        # one swept flag and its values
    sweep --learning_rate 1e-2 1e-3 1e-4

  --FLAG[=VALUE]           a base flag, passed to every run; one flag a line, no spaces. A
                           relative --flagfile= path is looked up in the current directory
                           first, then in the repository root (so configs/simple.flags works
                           from anywhere); the absolute path found is what runs get.
  sweep --FLAG V1 V2 ...   a swept flag and its values, separated by whitespace (a value may
                           contain commas: `sweep --classes airplane,cat,dog 5`). Each value
                           is passed verbatim as --FLAG=V. The runs are the Cartesian product
                           of all sweep lines, the first line varying slowest. A config with no
                           sweep line is one run, named `base`.
  # ...                    a comment, whole-line or trailing (a `#` at the start of a line or
                           after whitespace starts one).

Anything else is an error naming the file, line number and line.

Each run is named by its swept `flag=value` pairs joined by `,` in sweep-line order
(`optimizer=sgd,learning_rate=1e-3`), with characters other than [A-Za-z0-9._=,-] replaced
by `_`, and trains in DIR/<name>:

    cd <the current directory> && PYTHONPATH=<repository root> python -m trainer.main \
        <base flags> <swept flags> <TRAINER FLAGS> --model_dir=DIR/<name> \
        >> DIR/<name>/train.log 2>&1

Flags on the sweep's command line that are not its own (e.g. --data_dir=DATA,
--steps_per_epoch=5) go to every run after the config's flags, so they override them.
--model_dir is the sweep's to set (given anywhere, it is an error; a --model_dir inside a
flagfile is overridden). Runs start in the directory the sweep was started in, so relative
paths in trainer flags (--data_dir, --cache) mean what they mean on the sweep's command line.

Before anything runs, every run's flags are parsed with the trainer's own flag definitions: an
unknown flag or bad value stops the sweep with an error naming the run.

Resuming: a run whose DIR/<name>/results.json exists (trainer/workdir.py) finished earlier
and is skipped; any other run is started again (the trainer resumes from the checkpoints in
its model_dir). So after a
failure or Ctrl-C, rerun the same command. A run that fails is reported with the end of its log
and the sweep goes on; it then exits with status 1 and one line naming the failed runs (as
for a mistake in its flags or config; docs/cli.md).

At the end the sweep writes DIR/sweep.csv (a row per run: run, each swept flag's value, status
done/skipped/failed, and the results.json fields of RESULTS_SHOWN: test_loss, test_accuracy,
best_epoch, epochs_run, wall_time_s) and
DIR/sweep.json (the same, plus the config path, base flags and each run's command), and prints
the table. DIR/sweep.config is a copy of the config that ran; if an earlier sweep into DIR used
a different one, the sweep warns and goes on with the new grid (finished runs whose names are
still in it are still skipped, even if their other flags changed: use a new DIR to rerun).
"""

import csv
import dataclasses
import datetime
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import time

from absl import flags

from pipeline import logs

logs.import_tensorflow_if_main(__name__)  # before the imports below load TensorFlow

from tools import cli
from trainer import workdir

REPO = cli.REPO
# The results.json fields in sweep.csv and the table: a choice of workdir.RESULTS_FIELDS, in
# its order.
RESULTS_SHOWN = tuple(name for name in workdir.RESULTS_FIELDS if name in {
    "test_loss", "test_accuracy", "best_epoch", "epochs_run", "wall_time_s"})
NO_SWEEP_NAME = "base"
TAIL_LINES = 10  # lines of a failed run's log to print

_SWEEP_FLAG = re.compile(r"--([A-Za-z_][A-Za-z0-9_]*)")
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,-]")
_COMMENT = re.compile(r"(^|\s)#.*")
_NAME_MAX = 255  # bytes in a file name on common file systems


class SweepError(Exception):
  """The config or the command line is wrong; the message says where."""


@dataclasses.dataclass(frozen=True)
class SweepConfig:
  path: str  # as given
  text: str
  base_flags: tuple  # ("--flag=value", ...), flagfile paths made absolute
  swept: tuple  # (("flag", ("value", ...)), ...) in file order


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  values: dict  # {"flag": "value"} of the swept flags, in sweep-line order
  args: tuple  # the trainer flags, without --model_dir


def resolve_flagfile(path, cwd=None):
  """The absolute path of a flagfile: `path` itself if absolute, else the first existing file
  of cwd/path and REPO/path."""
  path = os.path.expanduser(path)
  if not path:
    raise SweepError("--flagfile= names no file")
  if os.path.isabs(path):
    candidates = [path]
  else:
    candidates = [os.path.join(cwd or os.getcwd(), path), os.path.join(REPO, path)]
  for candidate in candidates:
    if os.path.isfile(candidate):
      return os.path.abspath(candidate)
  raise SweepError(f"flagfile {path} not found (looked for {' and '.join(candidates)})")


def _resolve_flagfile_args(args, cwd=None):
  """`args` with every --flagfile=PATH (or --flagfile PATH) made absolute."""
  out = []
  resolve_next = False
  for arg in args:
    if resolve_next:
      out.append(resolve_flagfile(arg, cwd))
      resolve_next = False
    elif cli.flag_name(arg) == "flagfile" and "=" in arg:
      prefix, value = arg.split("=", 1)
      out.append(f"{prefix}={resolve_flagfile(value, cwd)}")
    else:
      out.append(arg)
      resolve_next = cli.flag_name(arg) == "flagfile"
  return out


def _check_no_model_dir(args, where):
  for arg in args:
    if cli.flag_name(arg) == "model_dir":
      raise SweepError(f"{where}: {arg}: the sweep sets --model_dir (to --output_dir/<run "
                       "name>); "
                       "leave it out")


def parse_config(text, path="<config>", cwd=None):
  """Parses a sweep config's text (module docstring). Raises SweepError."""
  base, swept = [], []
  for lineno, raw in enumerate(text.splitlines(), start=1):
    line = _COMMENT.sub("", raw).strip()
    if not line:
      continue
    where = f"{path}:{lineno}"
    tokens = line.split()
    if tokens[0].startswith("--") and len(tokens) == 1:
      _check_no_model_dir(tokens, f"{where}: {raw.strip()}")
      try:
        base.extend(_resolve_flagfile_args(tokens, cwd))
      except SweepError as e:
        raise SweepError(f"{where}: {raw.strip()}: {e}") from None
    elif tokens[0] == "sweep" and len(tokens) >= 3 and _SWEEP_FLAG.fullmatch(tokens[1]):
      flag, values = tokens[1][2:], tokens[2:]
      _check_no_model_dir(tokens[1:2], f"{where}: {raw.strip()}")
      if flag == "flagfile":
        for value in values:
          try:
            resolve_flagfile(value, cwd)
          except SweepError as e:
            raise SweepError(f"{where}: {raw.strip()}: {e}") from None
      if flag in dict(swept):
        raise SweepError(f"{where}: {raw.strip()}: --{flag} is swept twice; give all its "
                         "values on one line")
      swept.append((flag, tuple(values)))
    else:
      raise SweepError(f"{where}: expected `--flag=value` (one a line, no spaces) or "
                       f"`sweep --flag VALUE...`, got: {raw.strip()}")
  return SweepConfig(path=path, text=text, base_flags=tuple(base), swept=tuple(swept))


def load_config(path):
  with open(path, encoding="utf-8") as f:
    text = f.read()
  return parse_config(text, path)


def run_name(values):
  if not values:
    return NO_SWEEP_NAME
  return ",".join(_UNSAFE.sub("_", f"{flag}={value}") for flag, value in values.items())


def expand(config, extra_args=(), cwd=None):
  """The runs of the grid, in order: [Run]. Raises SweepError."""
  runs, seen = [], {}
  flags = [flag for flag, _ in config.swept]
  for combination in itertools.product(*(values for _, values in config.swept)):
    values = dict(zip(flags, combination))
    name = run_name(values)
    if name in seen:
      raise SweepError(f"{config.path}: two runs are both named {name} ({seen[name]} and "
                       f"{values}); run names must be unique")
    if len(name.encode()) > _NAME_MAX:
      raise SweepError(f"{config.path}: run name longer than {_NAME_MAX} bytes: {name}")
    seen[name] = values
    swept_args = []
    for flag, value in values.items():
      arg = f"--{flag}={value}"
      if flag == "flagfile":
        arg = _resolve_flagfile_args([arg], cwd)[0]
      swept_args.append(arg)
    runs.append(Run(name=name, values=values,
                    args=(*config.base_flags, *swept_args, *extra_args)))
  return runs


def trainer_command(run, run_dir, python=sys.executable):
  return [python, "-m", "trainer.main", *run.args, f"--model_dir={run_dir}"]


def validate(runs, out_dir):
  """Parses every run's flags with the trainer's flag definitions (imports TensorFlow).

  Raises SweepError naming the first run whose flags absl rejects.
  """
  for run in runs:
    problem = cli.check_trainer_args(
        [*run.args, f"--model_dir={os.path.join(out_dir, run.name)}"])
    if problem:
      raise SweepError(f"run {run.name}: {problem}")


def _log_tail(path, start, lines=TAIL_LINES):
  with open(path, "rb") as f:
    f.seek(start)
    text = f.read().decode("utf-8", errors="replace")
  return text.splitlines()[-lines:]


def train_one(run, run_dir):
  """Runs one trainer child, its output appended to run_dir/train.log.

  Returns (exit status, seconds, log tail lines).
  """
  os.makedirs(run_dir, exist_ok=True)
  command = trainer_command(run, run_dir)
  log_path = os.path.join(run_dir, "train.log")
  cwd = os.getcwd()  # the user's: relative paths in the flags mean what they typed
  env = cli.trainer_env({"PYTHONUNBUFFERED": "1"})
  with open(log_path, "ab") as log:
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    log.write(f"==== tools.sweep {stamp}: cd {shlex.quote(cwd)} && PYTHONPATH="
              f"{shlex.quote(env['PYTHONPATH'])} {shlex.join(command)}\n".encode())
    log.flush()
    start = log.tell()
    started = time.monotonic()
    child = subprocess.Popen(command, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                             stderr=subprocess.STDOUT, env=env)
    try:
      status = child.wait()
    except BaseException:  # Ctrl-C: stop the run; rerunning the sweep resumes it.
      cli.stop(child, grace_seconds=30)
      raise
  return status, time.monotonic() - started, _log_tail(log_path, start)


def _row(run, swept, status, results):
  row = {"run": run.name, **{flag: run.values[flag] for flag, _ in swept}, "status": status}
  for field in RESULTS_SHOWN:
    row[field] = (results or {}).get(field)
  return row


def _format_value(field, value):
  if value is None:
    return "-"
  if field in ("test_accuracy", "test_loss"):
    return f"{value:.4f}"
  if field == "wall_time_s":
    return f"{value:.0f}"
  return str(value)


def format_table(rows):
  """The rows as an aligned text table: run, status and the result fields."""
  columns = ("run", "status", *RESULTS_SHOWN)
  cells = [list(columns)] + [[_format_value(c, row[c]) for c in columns] for row in rows]
  widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
  out = []
  for line in cells:
    parts = [line[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(line[1:], widths[1:])]
    out.append("  ".join(parts).rstrip())
  return "\n".join(out)


def write_summary(out_dir, config, extra_args, runs, rows):
  """DIR/sweep.csv and DIR/sweep.json."""
  fields = ["run", *(flag for flag, _ in config.swept), "status", *RESULTS_SHOWN]
  with open(os.path.join(out_dir, "sweep.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
  summary = {
      "config": os.path.abspath(config.path),
      "base_flags": list(config.base_flags),
      "extra_flags": list(extra_args),
      "swept": {flag: list(values) for flag, values in config.swept},
      "runs": [{**row, "model_dir": os.path.join(out_dir, run.name),
                "command": trainer_command(run, os.path.join(out_dir, run.name))}
               for run, row in zip(runs, rows)],
      "failed": [row["run"] for row in rows if row["status"] == "failed"],
  }
  with open(os.path.join(out_dir, "sweep.json"), "w") as f:
    json.dump(summary, f, indent=2)
    f.write("\n")


def _warn(message):
  print(f"tools.sweep: warning: {message}", file=sys.stderr, flush=True)


def _say(message):
  print(message, flush=True)


def sweep(config, out_dir, extra_args=(), dry_run=False):
  """Validates, then runs (or with dry_run, prints) the grid. Returns the summary rows."""
  out_dir = os.path.abspath(out_dir)
  _check_no_model_dir(extra_args, "command line")
  swept_names = {flag for flag, _ in config.swept}
  for arg in extra_args:
    name = cli.flag_name(arg)
    if name and name not in swept_names and name.startswith("no"):
      name = name[2:]  # --noaugment
    if name in swept_names:
      _warn(f"{arg} on the command line overrides the swept --{name} values in every run")
  runs = expand(config, extra_args)
  validate(runs, out_dir)

  saved_config = os.path.join(out_dir, "sweep.config")
  if os.path.exists(saved_config):
    with open(saved_config, encoding="utf-8") as f:
      if f.read() != config.text:
        _warn(f"{config.path} differs from {saved_config}, the config of an earlier sweep into "
              "this directory; the new grid decides (runs it shares with the old one that "
              "finished are skipped even if their flags changed)")
  run_dirs = [os.path.join(out_dir, run.name) for run in runs]
  finished = [workdir.read_results(d) is not None for d in run_dirs]
  n = len(runs)
  _say(f"sweep: {n} run(s) from {config.path} in {out_dir}, {sum(finished)} finished earlier")
  if dry_run:
    _say(f"sweep: --dry_run: nothing runs; the commands (each run in {os.getcwd()}):")
    for k, (run, run_dir, done) in enumerate(zip(runs, run_dirs, finished), start=1):
      _say(f"[{k}/{n}] {run.name}: " + ("finished earlier, would be skipped" if done
                                        else "would train"))
      _say("    " + shlex.join(trainer_command(run, run_dir)))
    return []

  os.makedirs(out_dir, exist_ok=True)
  with open(saved_config, "w", encoding="utf-8") as f:
    f.write(config.text)
  rows = []
  for k, (run, run_dir) in enumerate(zip(runs, run_dirs), start=1):
    prefix = f"[{k}/{n}] {run.name}"
    results = workdir.read_results(run_dir)
    if results is not None:
      _say(f"{prefix}: finished earlier, skipped")
      rows.append(_row(run, config.swept, "skipped", results))
      continue
    log_path = os.path.join(run_dir, "train.log")
    _say(f"{prefix}: training (log: {log_path})")
    status, seconds, tail = train_one(run, run_dir)
    results = workdir.read_results(run_dir) if status == 0 else None
    if results is None:
      reason = f"exit {status}" if status else "exit 0 without results.json"
      _say(f"{prefix}: FAILED ({reason}), see {log_path}")
      for line in tail:
        _say(f"    {line}")
      rows.append(_row(run, config.swept, "failed", None))
      continue
    accuracy = results.get("test_accuracy")
    accuracy = f"{accuracy:.4f}" if isinstance(accuracy, (int, float)) else accuracy
    _say(f"{prefix}: done in {seconds:.0f} s, test_accuracy {accuracy}")
    rows.append(_row(run, config.swept, "done", results))

  write_summary(out_dir, config, extra_args, runs, rows)
  _say(format_table(rows))
  _say(f"sweep: wrote {os.path.join(out_dir, 'sweep.csv')} and sweep.json")
  return rows


def define_flags(flag_values):
  fv = {"flag_values": flag_values}
  flags.DEFINE_string("config", None, "The sweep config file.", **fv)
  flags.DEFINE_string("output_dir", None, "Where each run's model_dir and the summary files "
                      "go.", **fv)
  # --out_dir: the spelling before --output_dir became every tool's.
  flags.DEFINE_alias("out_dir", "output_dir", flag_values=flag_values)
  flags.DEFINE_boolean("dry_run", False, "Print each run's command and whether it would be "
                       "skipped; run nothing, write nothing.", **fv)
  flags.mark_flags_as_required(["config", "output_dir"], flag_values=flag_values)


def main(argv, flag_values):
  """argv[1:]: the flags that are not the sweep's, for every trainer.main run."""
  try:
    extra = _resolve_flagfile_args(argv[1:])
    config = load_config(flag_values.config)
    rows = sweep(config, flag_values.output_dir, extra, dry_run=flag_values.dry_run)
  except (SweepError, OSError, workdir.RunDirError) as e:
    raise cli.ToolError(e) from None
  failed = [row["run"] for row in rows if row["status"] == "failed"]
  if failed:
    raise cli.ToolError(f"{len(failed)} of {len(rows)} run(s) failed: {', '.join(failed)}")


COMMAND = cli.Command("tools.sweep", define_flags, main, pass_through=True)

if __name__ == "__main__":
  COMMAND.run()
