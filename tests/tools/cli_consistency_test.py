"""Every entry point's command line behaves alike (pipeline/command_line.py, docs/cli.md):
--help exits 0 and shows the defaults and which flags are required; a mistake in the flags is
one line, `<tool>: error: ...` naming the flag, exit status 1, no traceback.

Each case is one real `python -m` child, as a user types it: the point is what absl and the
entry point's own start-up do before any of the tool's code runs (most of them import
TensorFlow first, ~3-5 s a case).
"""

import os
import re
import subprocess
import sys
import tempfile

import pytest

from tests import testdata

# (module, its required flags, a flag with a default): --help must mark the first and show
# the default of the second.
HELP_CASES = [
    ("pipeline.build_tfrecords", ["source", "output_dir"], "num_shards"),
    ("trainer.main", ["data_dir", "model_dir"], "batch_size"),
    ("trainer.evaluate", ["model_dir", "data_dir"], "split"),
    ("trainer.predict", ["model_dir"], "top_k"),
    ("tools.sweep", ["config", "output_dir"], "dry_run"),
    ("tools.report", ["output_dir"], "title"),
    ("tools.import_weights", ["checkpoint", "output"], "model"),
    ("tools.verify_tfrecords", [], "max_errors"),
    ("tools.launch_local", [], "workers"),
]

# (module, the prefix of its error lines, arguments, the flag the error must name).
ERROR_CASES = [
    ("pipeline.build_tfrecords", "pipeline.build_tfrecords", ["--source=image_dir"],
     "--output_dir"),
    ("pipeline.build_tfrecords", "pipeline.build_tfrecords",
     ["--source=image_dir", "--output_dir=/tmp/x", "--image_format=jpg"], "--image_format"),
    ("trainer.main", "trainer.main", ["--epochs=x"], "--epochs"),
    # The old name runs trainer.main itself, so its lines are trainer.main's.
    ("trainer.train", "trainer.main", ["--data_dir=d", "--model_dir=m", "--model=nope"],
     "--model"),
    ("trainer.evaluate", "trainer.evaluate", ["--batch_size=0"], "--batch_size"),
    ("trainer.predict", "trainer.predict", ["--top_k=-1"], "--top_k"),
    ("tools.sweep", "tools.sweep", ["--output_dir=/tmp/x"], "--config"),
    ("tools.report", "tools.report", ["run1"], "--output_dir"),
    ("tools.verify_tfrecords", "tools.verify_tfrecords", ["d", "--max_errors=0"],
     "--max_errors"),
    ("tools.launch_local", "tools.launch_local", ["--workers=x"], "--workers"),
    # A trainer flag passed through (misspelt): refused before any trainer child starts.
    ("tools.bench_memory", "tools.bench_memory", ["--data_dir=d", "--learning_rat=1e-3"],
     "learning_rat"),
]


MPLCONFIGDIR = tempfile.mkdtemp(prefix="mplconfig-")


def run(module, *args):
  # The commands' own log settings, not the test runner's TF_CPP_MIN_LOG_LEVEL.
  env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_CONFIG")}
  # Matplotlib (imported through Keras) warns on stderr when $HOME/.config is not writable,
  # as in Bazel's sandbox: give it a directory of its own.
  env["MPLCONFIGDIR"] = MPLCONFIGDIR
  return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                        cwd=testdata.REPO, env=env, timeout=180)


def flag_help(text, name):
  """The help of --name in absl's --help text: its line and the more-indented ones below."""
  lines = text.splitlines()
  for i, line in enumerate(lines):
    if re.match(rf"^\s+(-\S,)?--(\[no\])?{name}:", line):
      indent = len(line) - len(line.lstrip())
      block = [line]
      for more in lines[i + 1:]:
        if len(more) - len(more.lstrip()) <= indent:
          break
        block.append(more)
      return " ".join(" ".join(block).split())
  raise AssertionError(f"--{name} is not in the help:\n{text[-3000:]}")


@pytest.mark.parametrize("module,required,defaulted", HELP_CASES,
                         ids=[case[0] for case in HELP_CASES])
def test_help_exits_0_and_shows_defaults_and_required_flags(module, required, defaulted):
  done = run(module, "--help")
  assert done.returncode == 0, done.stderr[-3000:]
  assert "(default: " in flag_help(done.stdout, defaulted)
  for name in required:
    shown = flag_help(done.stdout, name)
    assert shown.endswith("(required)") and "(default: " not in shown, shown


@pytest.mark.parametrize("module,prefix,args,flag", ERROR_CASES,
                         ids=[case[0] for case in ERROR_CASES])
def test_a_flag_mistake_is_one_line_naming_the_flag_and_exit_1(module, prefix, args, flag):
  done = run(module, *args)
  assert done.returncode == 1, done.stderr[-3000:]
  assert "Traceback" not in done.stderr, done.stderr[-3000:]
  last = [line for line in done.stderr.splitlines() if line.strip()][-1]
  assert re.match(rf"^{re.escape(prefix)}: error: ", last), done.stderr[-3000:]
  assert flag in last, last
  # Nothing before it either: TF's start-up notices are held back (pipeline/logs.py) in the
  # commands that import it.
  assert [line for line in done.stderr.splitlines() if line.strip()] == [last], done.stderr
