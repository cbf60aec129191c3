"""Starting the project's commands as real child processes, as a user's shell would."""

import os
import subprocess
import sys

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
