"""Starting the project's commands as real child processes, as a user's shell would."""

import os
import re
import subprocess
import sys
import threading
import time

from tests import testdata

REPO = str(testdata.REPO)


def command_env(env=None):
  """The environment a test's child gets: quiet TensorFlow, unbuffered output, no inherited
  TF_CONFIG (a stray one would make a one-process run look for its cluster), plus `env`."""
  full = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
  full.pop("TF_CONFIG", None)
  full.update(env or {})
  return full


def start(module, *args, env=None, merge_stderr=False):
  """Popen of `python -m <module> <args>` in the repository root, text pipes for stdout and
  stderr (stderr into stdout when merge_stderr)."""
  return subprocess.Popen(
      [sys.executable, "-m", module, *args], cwd=REPO, env=command_env(env),
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
      text=True)


def start_trainer(*args, env=None, merge_stderr=False):
  """Popen of `python -m trainer.main <args>`."""
  return start("trainer.main", *args, env=env, merge_stderr=merge_stderr)


def run_trainer(*args, env=None, timeout=180):
  """`python -m trainer.main <args>` to the end: a CompletedProcess with text output."""
  return subprocess.run([sys.executable, "-m", "trainer.main", *args], cwd=REPO,
                        env=command_env(env), capture_output=True, text=True, timeout=timeout)


def finish(process, timeout):
  """Waits for a child started with text pipes; kills it if it outlives `timeout` s (a hung
  worker must not outlive its test). Returns (exit status, its stdout)."""
  try:
    out, _ = process.communicate(timeout=timeout)
  finally:
    if process.poll() is None:
      process.kill()
      process.communicate()
  return process.returncode, out


class Lines:
  """A child started with merged text output (merge_stderr=True), whose lines a thread
  collects, so that a test can wait for a line without blocking on the pipe."""

  def __init__(self, process):
    self.process, self.lines = process, []
    self.changed = threading.Condition()
    self.reader = threading.Thread(target=self._read, daemon=True)
    self.reader.start()

  def _read(self):
    for line in self.process.stdout:
      with self.changed:
        self.lines.append(line)
        self.changed.notify_all()

  def wait_for(self, pattern, timeout):
    """The first output line matching `pattern`; fails if none within `timeout` s."""
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    with self.changed:
      while True:
        found = next((l for l in self.lines if regex.search(l)), None)
        if found:
          return found
        left = deadline - time.monotonic()
        assert left > 0 and self.process.poll() is None, (
            f"no line matching {pattern!r} (exit code {self.process.poll()}):\n"
            + "".join(self.lines[-40:]))
        self.changed.wait(min(left, 1.0))

  def finish(self, timeout):
    """(exit status, all its output); kills it if it outlives `timeout` s (a hung child must
    not outlive its test)."""
    try:
      self.process.wait(timeout=timeout)
    finally:
      if self.process.poll() is None:
        self.process.kill()
        self.process.wait()
    self.reader.join(timeout=10)
    return self.process.returncode, "".join(self.lines)
