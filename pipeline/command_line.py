"""What every entry point's command line shares: one error line, --help's exit status, and
required flags that --help marks.

absl on its own reports a bad flag in two lines ("FATAL Flags parsing error: ..." and a hint),
a missing required flag as "flag --x=None: Flag --x must have a value other than None.", and
ends --help with exit status 1, the status of a mistake. Every entry point (the Beam job, the
trainer's commands, tools/cli.py's tools) parses its flags through `parse` instead, so that a
mistake is one line, `<tool>: error: <what is wrong>`, exit status 1, and --help exit status 0.
The exit statuses of each command are in docs/cli.md.

It lives in `pipeline`, which the trainer imports already, so that the installed package (the
`pipeline` and `trainer` packages only) has it too.
"""

import re
import sys

from absl import flags

# absl's help flags (app.define_help_flags): each prints the help and exits with status 1.
HELP_FLAGS = ("help", "?", "helpshort", "helpfull", "helpxml")
REQUIRED = "(required)"
_MISSING = re.compile(r"flag --(\w+)=None: Flag --\1 must have a value other than None\.")


def flag_name(arg):
  """The flag name of an argument ("model_dir" for --model_dir=x or -model_dir), else None."""
  if not arg.startswith("-") or arg in ("-", "--"):
    return None
  return arg.lstrip("-").split("=", 1)[0]


def error_line(error):
  """The message of an error on one line; absl's missing-flag message as "--x is required"."""
  text = _MISSING.sub(r"--\1 is required;", str(error))
  return " ".join(text.split()).rstrip(";")


def fail(tool, error, status=1):
  """Ends the process: `<tool>: error: <error on one line>` on stderr, exit `status`. With
  status 1 the line is SystemExit's code (Python prints it and exits 1), which an in-process
  caller (tools/cli.py's `call`, tests) reads back."""
  line = f"{tool}: error: {error_line(error)}"
  if status == 1:
    sys.exit(line)
  print(line, file=sys.stderr, flush=True)
  sys.exit(status)


def parse(tool, argv, parse_flags=None):
  """parse_flags(argv) (absl's global FLAGS(argv) by default) for app.run's flags_parser:
  its result, or a flag error as one line and exit status 1; --help ends with status 0."""
  try:
    return (parse_flags or flags.FLAGS)(argv)
  except flags.Error as e:
    fail(tool, e)
  except SystemExit as e:
    if e.code == 1 and any(flag_name(arg) in HELP_FLAGS for arg in argv[1:]):
      sys.exit(0)  # the help was printed: what was asked for, not a mistake
    raise


def mark_required(names, flag_values=flags.FLAGS, *, validate=True):
  """Marks the flags `names` as required in --help (" (required)" after their help: absl's
  mark_flag_as_required shows nothing there) and, with validate, to absl, which then refuses
  a command line without them (`<tool>: error: --x is required` through `parse`). Commands
  that check them themselves, with a message that says more, pass validate=False."""
  for name in names:
    flag_values[name].help = f"{flag_values[name].help} {REQUIRED}"
  if validate:
    flags.mark_flags_as_required(names, flag_values=flag_values)


def show_required(flag_values=flags.FLAGS):
  """Marks in --help every flag that absl's mark_flag_as_required made required and that
  mark_required has not marked yet (tools/cli.py calls it after a tool defines its flags)."""
  for name in list(flag_values):
    flag = flag_values[name]
    required = f"Flag --{name} must have a value other than None."
    if (flag.name == name and not flag.help.endswith(REQUIRED)
        and any(getattr(v, "message", None) == required for v in flag.validators)):
      flag.help = f"{flag.help} {REQUIRED}"
