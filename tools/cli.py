"""The command line every tool shares: absl flags, pass-through flags, one-line errors.

A tool defines its flags in `define_flags(flag_values)` and its work in
`main(argv, flag_values)`, and ends with

    COMMAND = cli.Command("tools.NAME", define_flags, main)
    if __name__ == "__main__":
      COMMAND.run()

`run` defines the flags in absl's global registry only then, on the __main__ path (as
trainer/main.py and pipeline/build_tfrecords.py do), so importing a tool claims no flag names;
`call(argv)` runs the tool in this process with flags of its own (tests).

A user's mistake (a bad flag, a missing file) ends the tool with one line,
`tools.NAME: error: ...`, and exit status 1: no traceback, as the trainer does; --help exits
with status 0. Both come from pipeline/command_line.py, which every entry point shares;
`mark_required` marks a required flag in --help. docs/cli.md lists each tool's exit statuses.
"""

import dataclasses
import os
import pathlib
import subprocess
from typing import Callable

from absl import app
from absl import flags

from pipeline import command_line
from pipeline import logs

REPO = pathlib.Path(__file__).resolve().parents[1]
# Flags absl would act on itself that a pass-through tool hands to the trainer untouched: a
# sweep finds a relative --flagfile in the repository root too (tools/sweep.py).
_HELD_FLAGS = ("flagfile",)


class ToolError(Exception):
  """A user's mistake; the message says what to change (one line)."""


flag_name = command_line.flag_name
mark_required = command_line.mark_required


def parse(flag_values, argv, *, pass_through=False):
  """Parses argv (argv[0] the program) into flag_values; returns the rest, argv[0] first.

  Without pass_through, every flag must be the tool's (absl rejects others). With it, flags
  that are not the tool's stay in the rest, in their order, with any `--flagfile` (which
  absl would otherwise read itself): they are the trainer's. A `--` is dropped (flags after
  it are passed on too).
  """
  if not pass_through:
    return flag_values(argv)
  held, masked, hold_next = {}, [argv[0]], False
  for arg in argv[1:]:
    if hold_next or flag_name(arg) in _HELD_FLAGS:
      placeholder = f"\0held{len(held)}"
      held[placeholder] = arg
      masked.append(placeholder)
      hold_next = not hold_next and "=" not in arg
    else:
      masked.append(arg)
  rest = flag_values(masked, known_only=True)
  return [held.get(arg, arg) for arg in rest if arg != "--"]


def stop(process, grace_seconds):
  """Ends a child: SIGTERM, then SIGKILL if it has not exited within grace_seconds."""
  process.terminate()
  try:
    process.wait(timeout=grace_seconds)
  except subprocess.TimeoutExpired:
    process.kill()
    process.wait()


def trainer_env(extra=None):
  """os.environ for a `python -m trainer.main` child started in the caller's directory (so
  that its relative paths mean what the user typed): the repository root first on
  PYTHONPATH, so that `trainer` imports from anywhere; plus `extra`."""
  env = dict(os.environ, **(extra or {}))
  env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
  return env


def check_trainer_args(args):
  """Parses `args` (trainer flags, without the program name) with trainer.main's own flag
  definitions. Returns None, or the one-line reason they would fail: what absl rejects (an
  unknown flag, a bad value) or an argument that is not a flag. For tools that start trainer
  runs (sweep, bench_memory): a mistake stops them before any child runs, naming the flag."""
  # TensorFlow's C++ start-up notices are noise here; the runs get the environment as it was.
  saved = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  try:
    from trainer import main  # pylint: disable=g-import-not-at-top
  finally:
    if saved is None:
      del os.environ["TF_CPP_MIN_LOG_LEVEL"]
  flag_values = flags.FlagValues()
  main.define_flags(flag_values)
  try:
    rest = flag_values(["trainer.main", *args])
  except flags.Error as e:
    return " ".join(str(e).split())
  if len(rest) > 1:
    return f"unexpected arguments (not flags): {' '.join(rest[1:])}"
  return None


@dataclasses.dataclass(frozen=True)
class Command:
  name: str  # as typed after `python -m`: the prefix of its error lines
  define_flags: Callable  # define_flags(flag_values)
  main: Callable  # main(argv, flag_values) -> exit status (None is 0)
  pass_through: bool = False  # flags that are not the tool's are the trainer's (see parse)
  # The tool uses TensorFlow: `run` imports it once the flags are parsed, without its
  # start-up notices unless --verbosity=1 (pipeline/logs.py).
  tensorflow: bool = False

  def fail(self, error):
    command_line.fail(self.name, error)

  def run(self):
    """The command line: defines the flags in absl's registry, parses sys.argv, runs."""
    self.define_flags(flags.FLAGS)
    command_line.show_required(flags.FLAGS)

    def parser(argv):
      return command_line.parse(
          self.name, argv, lambda a: parse(flags.FLAGS, a, pass_through=self.pass_through))

    def main(argv):
      if self.tensorflow:
        logs.import_tensorflow(flags.FLAGS.verbosity >= 1)
      try:
        return self.main(argv, flags.FLAGS)
      except ToolError as e:
        self.fail(e)

    app.run(main, flags_parser=parser)

  def call(self, argv):
    """Runs the tool in this process on `argv` (without the program name), with flags of its
    own; returns main's exit status. Errors raise SystemExit with the one-line message."""
    flag_values = flags.FlagValues()
    self.define_flags(flag_values)
    command_line.show_required(flag_values)
    try:
      rest = parse(flag_values, [self.name, *argv], pass_through=self.pass_through)
      return self.main(rest, flag_values)
    except (flags.Error, ToolError) as e:
      self.fail(e)
