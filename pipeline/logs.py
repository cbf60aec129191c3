"""What the project's commands print: their own lines, and of the libraries under them
(TensorFlow's Python and C++ logging, absl's C++ start-up notices, Apache Beam) only warnings
and errors. `--verbosity=1` (absl's own flag, debug) brings every library line back.

Both entry points (`python -m trainer.main`, `python -m pipeline.build_tfrecords`) call

    logs.import_tensorflow(logs.verbose_in_argv(sys.argv))  # before TensorFlow is imported
    ...
    logs.configure(verbose=FLAGS.verbosity >= 1)          # first thing in main()

Three kinds of internal lines, three remedies:

- TensorFlow's C++ logging obeys TF_CPP_MIN_LOG_LEVEL, read when TensorFlow loads: its
  default here is 1 (INFO hidden, warnings and errors shown). A value in the environment
  wins.
- Two C++ INFO lines at `import tensorflow` obey nothing: "WARNING: All log messages before
  absl::InitializeLog() is called are written to STDERR" and "I0000 ... port.cc:153] oneDNN
  custom operations are on", printed once by libtensorflow_framework.so.2 and again by
  _pywrap_profiler_plugin.so (each carries its own absl). absl writes every message to fd 2
  before InitializeLog, whatever its level; TF_CPP_MIN_LOG_LEVEL, GLOG_minloglevel and
  TF_CPP_VMODULE do not stop them (tried with tensorflow-cpu 2.21.0, 2026-12-02), and
  TF_ENABLE_ONEDNN_OPTS=0 would do it only by changing the arithmetic. So `import_tensorflow`
  points fd 2 at a temporary file for the import and writes back every captured line but
  those absl INFO ones: a warning, an error or a Python traceback of the import still shows.
- Python records: a logger's name does not tell them apart (TensorFlow's functional_saver.py,
  signature_serialization.py and fingerprinting_utils.py log through absl's logger, as the
  trainer does), so a filter on the handlers keeps a record below WARNING only when it was
  logged from a file of the project's packages (pipeline/, trainer/, tools/), or, relayed
  from a Beam worker process, names such a file as its log_location.
"""

import importlib
import logging
import os
import re
import sys
import tempfile

# The project's packages: records logged from their files are the user's lines.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT_DIRS = tuple(os.path.join(_ROOT, name) + os.sep
                     for name in ("pipeline", "trainer", "tools"))
# TF_CPP_MIN_LOG_LEVEL when the environment has none: 1 hides C++ INFO, keeps warnings.
DEFAULT_TF_CPP_MIN_LOG_LEVEL = "1"

# absl's C++ notices before InitializeLog: the banner, and INFO lines. Before InitializeLog
# the time is "0000 00:00:<seconds since 1970>", after it "MMDD HH:MM:SS.micros".
_CPP_BANNER = b"WARNING: All log messages before absl::InitializeLog() is called are written"
_CPP_INFO_LINE = re.compile(rb"^I\d{4} [\d:.]+ +\d+ [\w.-]+:\d+\] ")


def verbose_in_argv(argv):
  """Whether the command line asks for --verbosity (or -v) of 1 or more. Read before absl
  parses the flags, because TensorFlow is imported (and prints) before then; a --verbosity
  inside a --flagfile reaches the Python records (configure) but not the import's lines."""
  args = list(argv[1:])
  for i, arg in enumerate(args):
    name, eq, value = arg.lstrip("-").partition("=")
    if not arg.startswith("-") or name not in ("verbosity", "v"):
      continue
    if not eq:
      value = args[i + 1] if i + 1 < len(args) else ""
    try:
      return int(value) >= 1
    except ValueError:
      return False
  return False


def is_cpp_notice(line):
  """A line absl's C++ logging writes before InitializeLog that is INFO, not news."""
  return line.startswith(_CPP_BANNER) or bool(_CPP_INFO_LINE.match(line))


def import_tensorflow(verbose=False):
  """Imports TensorFlow without its start-up INFO notices (every other line it writes to
  stderr is written back once the import is over). With `verbose`, a plain import."""
  if not verbose:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", DEFAULT_TF_CPP_MIN_LOG_LEVEL)
  if verbose or "tensorflow" in sys.modules:
    return importlib.import_module("tensorflow")
  return import_holding_notices("tensorflow")


def import_tensorflow_if_main(module_name):
  """Called at the top of a command's module with its `__name__`, before the imports that
  load TensorFlow: run as a program (`__main__`), TensorFlow is imported now, without its
  start-up notices unless the command line asks for --verbosity=1 (verbose_in_argv), and the
  module's later imports find it loaded; imported as a library (by a test, another tool), it
  does nothing."""
  if module_name == "__main__":
    import_tensorflow(verbose_in_argv(sys.argv))


def import_holding_notices(module_name):
  """Imports `module_name` with fd 2 (C++ code writes there, not to sys.stderr) pointed at a
  temporary file, then writes back to stderr every line but absl's C++ INFO notices, also
  when the import fails. Lines come out when the import is over, not as they are written."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as held:
    os.dup2(held.fileno(), 2)
    try:
      return importlib.import_module(module_name)
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      held.seek(0)
      kept = b"".join(line for line in held if not is_cpp_notice(line))
      while kept:
        kept = kept[os.write(2, kept):]


class ProjectRecordsOnly(logging.Filter):
  """Passes warnings and errors, and records below WARNING only from the project's files:
  logged from them in this process, or (Beam's multi_processing workers) relayed by Beam's
  logging service with a log_location in them.

  A relayed record that passes is rewritten as the worker logged it (unwrap_relayed): its
  message, file, line and time, not Beam's one-line dump of the whole log entry. One relayed
  warning is dropped: every multi_processing worker's "No semi_persistent_directory found:
  User registered objects (e.g. schema, logical type) ... may not be effective" (Beam's
  sdk_worker_main, apache-beam 2.x under cloudpickle), which is about a pickled main session
  this job neither has nor needs."""

  def filter(self, record):
    relayed = record.name.startswith("apache_beam") and record.msg == "Worker: %s"
    if relayed:
      text = record.getMessage()
      location = _WORKER_LOCATION.search(text)
      if _NO_MAIN_SESSION in text and location and location.group(1).endswith(
          _SDK_WORKER_MAIN):
        return False
      keep = (record.levelno >= logging.WARNING
              or (bool(location) and _is_project_file(location.group(1))))
      if keep:
        unwrap_relayed(record)
      return keep
    return record.levelno >= logging.WARNING or _is_project_file(record.pathname)


def unwrap_relayed(record):
  """Rewrites, in place, a record that Beam's local job service logged for a worker process
  ('Worker: severity: INFO timestamp {...} message: "..." log_location: "path:line" ...', the
  text form of a Fn API LogEntry) into the worker's own message, file, line and time. A
  record that does not parse as one is left as it is."""
  from google.protobuf import text_format  # pylint: disable=g-import-not-at-top
  # Only Beam's jobs relay records: Beam is loaded when there is one to unwrap.
  from apache_beam.portability.api import beam_fn_api_pb2  # pylint: disable=g-import-not-at-top
  entry = beam_fn_api_pb2.LogEntry()
  try:
    text_format.Parse(str(record.args[0]), entry, allow_unknown_field=True)
  except (text_format.ParseError, IndexError, TypeError):
    return
  if not entry.message:
    return
  record.msg, record.args = entry.message, ()
  path, _, line = entry.log_location.rpartition(":")
  if path and line.isdigit():
    record.pathname, record.lineno = path, int(line)
    record.filename = os.path.basename(path)
    record.module = os.path.splitext(record.filename)[0]
  if entry.HasField("timestamp"):
    record.created = entry.timestamp.seconds + entry.timestamp.nanos / 1e9
    record.msecs = (entry.timestamp.nanos // 1_000_000) % 1000


# Beam's BeamFnLoggingServicer logs each worker record as 'Worker: %s' % str(LogEntry), whose
# log_location is "<path>:<line>".
_WORKER_LOCATION = re.compile(r'log_location: "([^"]+?)(?::\d+)?"')
_NO_MAIN_SESSION = 'message: "No semi_persistent_directory found:'
_SDK_WORKER_MAIN = "/apache_beam/runners/worker/sdk_worker_main.py"
_FILTER = ProjectRecordsOnly()


def _is_project_file(path):
  return os.path.abspath(path).startswith(PROJECT_DIRS)


def configure(verbose=False):
  """Holds the libraries' Python records below WARNING back (see the module's docstring),
  unless `verbose`. Call it once absl has parsed the flags (its handler is on the root
  logger then), first in main()."""
  if verbose:
    return
  # The root logger's handlers (absl's, under app.run), and the one TensorFlow adds to its
  # own logger when it is imported before any handler is on the root ("INFO:tensorflow:...").
  for handler in logging.getLogger().handlers + logging.getLogger("tensorflow").handlers:
    handler.addFilter(_FILTER)
