"""What every benchmark shares: repeats, min / median / max tables, the machine, --json.

A benchmark measures each of its methods once per repeat, all of them in turn within a
repeat (so that a change in the machine's load hits every method, not one), and states the
spread over repeats with the machine it ran on (airbench's habit: a result comes with its
hardware and its spread):

    runs = harness.repeat(METHODS, repeats, measure, log=log)   # {method: [value per repeat]}
    result = {"images_per_s": harness.medians(runs), "runs": runs,
              "settings": {..., **harness.machine()}}
    harness.emit(result, format_table, as_json)

and its format_table joins `spread_table(...)`, `ratio_lines(...)` and `machine_line(...)`.
"""

import json
import os
import statistics
import sys

from absl import flags

from tools import cli


def define_flags(flag_values, *, repeats=None):
  """--json (every benchmark) and, given a default, --repeats."""
  if repeats is not None:
    flags.DEFINE_integer("repeats", repeats, "Times each method is measured; the table shows "
                         "min / median / max over them.", lower_bound=1,
                         flag_values=flag_values)
  flags.DEFINE_boolean("json", False, "Print one JSON object instead of the table.",
                       flag_values=flag_values)


def start(argv):
  """What every benchmark's main does first: refuse positional arguments (a typo'd flag
  lands there) and quiet TensorFlow's C++ start-up notices, which would interleave with the
  table."""
  if len(argv) > 1:
    raise cli.ToolError(f"unexpected arguments: {' '.join(argv[1:])}")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def progress(as_json):
  """A log(line) function writing progress to stderr, or None with --json (stdout is the
  JSON object; stderr stays quiet)."""
  return None if as_json else lambda line: print(line, file=sys.stderr, flush=True)


def repeat(names, repeats, measure, *, order=None, log=None, spec=",.0f", unit=""):
  """{name: [measure(name, r) for each repeat r]}, every name measured in turn within a
  repeat; order(r) gives the names' order in repeat r (default: as given)."""
  runs = {name: [] for name in names}
  for r in range(repeats):
    for name in (order(r) if order else names):
      runs[name].append(measure(name, r))
    if log:
      log(f"repeat {r + 1}/{repeats}: " +
          ", ".join(f"{name} {runs[name][-1]:{spec}}{unit}" for name in names))
  return runs


def medians(runs):
  return {name: statistics.median(values) for name, values in runs.items()}


def spread_table(runs, *, label, heading, spec=",.0f", notes=None):
  """Lines: a header `label min median max   heading`, then one row per name of `runs`;
  notes: {name: text} appended to a row."""
  width = max(len(label), *(len(name) for name in runs))
  cells = {name: [format(f(values), spec) for f in (min, statistics.median, max)]
           for name, values in runs.items()}
  column = max(9, *(len(c) for row in cells.values() for c in row))
  lines = [f"{label:<{width}} {'min':>{column}} {'median':>{column}} {'max':>{column}}   "
           f"{heading}"]
  for name, row in cells.items():
    note = (notes or {}).get(name)
    lines.append(f"{name:<{width}} " + " ".join(f"{c:>{column}}" for c in row) +
                 (f"   {note}" if note else ""))
  return lines


def ratio_lines(ratios):
  """Lines `name  1.23x`, names aligned."""
  width = max((len(name) for name in ratios), default=0)
  return [f"{name:<{width}} {value:6.2f}x" for name, value in ratios.items()]


def _cpu_model():
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return "unknown"


def machine():
  """{"cpus", "cpu_model", "load_average"}: where and under what load a result was taken.
  Called at the end of a measurement: the load average covers it."""
  return {"cpus": os.cpu_count(), "cpu_model": _cpu_model(),
          "load_average": list(os.getloadavg())}


def machine_line(settings):
  """The machine of `settings` (which holds machine()'s fields) as one line."""
  load = ", ".join(f"{v:.2f}" for v in settings["load_average"])
  return (f"machine: {settings['cpus']} CPUs ({settings.get('cpu_model', 'unknown')}); "
          f"load average at the end (1, 5, 15 min): {load}")


def emit(result, format_table, as_json):
  """Prints the result: one JSON object, or format_table(result)."""
  print(json.dumps(result) if as_json else format_table(result), flush=True)
