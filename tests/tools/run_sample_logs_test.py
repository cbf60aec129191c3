"""tools/run_sample.sh prints the project's own lines only: its two commands, run here as it
runs them (the Beam job on the shipped sample, then the trainer with configs/sample.flags,
cut to 2 epochs), write no line of TensorFlow's, absl's C++ or Beam's internals; with
--verbosity=1 the internals are back (pipeline/logs.py)."""

import re
import subprocess
import sys
import tempfile

import pytest

from tests import processes
from tests import testdata

# An absl line: severity, date or 0000, time, thread, file:line] message.
ABSL_LINE = re.compile(r"^[IWEF]\d{4} [\d:.]+ +\d+ (?P<file>[\w.-]+):\d+\] (?P<message>.*)$")
# The lines meant for the user, by the file that logs them (absl lines), and the Beam job's
# printed summary. A new line of the project's own belongs here.
USER_LINES = {
    "build_tfrecords.py": (r"Source \S+: \d+ classes", r"Writing \{.*\} to ",
                           r"build_tfrecords: [\d,]+ of [\d,]+ images \(\d+%\) in .* "
                           r"images/s: [\d,]+ written, [\d,]+ rejected$"),
    # Only when the job outlasts --progress_seconds (30): not for the 500 images.
    "job_progress.py": (r"build_tfrecords: [\d,]+ of [\d,]+ images \(\d+%\), [\d,]+ images/s, "
                        r"ETA ",),
    "cache.py": (r"--cache=auto: train ",),
    "train.py": (r"this process writes into ", r"input pipeline \d+ of \d+ reads train shards",
                 r"training simple \(\d+ parameters\)", r"stage main: ",
                 r"epoch \d+/\d+: loss ", r"test_loss [\d.]+ test_accuracy ",
                 r"final weights sha256 [0-9a-f]{64}$"),
    "main.py": (r"results: \S+/results\.json$", r"model: \S+/model\.keras and \S+/saved_model/$"),
    # Only when an epoch outlasts --progress_seconds (30): not on a quiet machine.
    "progress.py": (r"epoch \d+/\d+: step \d+/\d+, [\d,]+ examples/s, epoch ETA ",),
}
SUMMARY_LINES = (r"Wrote \S+ in [\d.]+ s: \d+ classes, image shape ",
                 r"  (train|validation|test) +\d+ examples in \d+ shards$",
                 r"  rejected +\d+ \([\d.]+%\) .*-> \S+/rejected\.csv$")
# What the commands printed before pipeline/logs.py (TensorFlow 2.21, Beam 2.77).
INTERNAL_LINES = ("absl::InitializeLog", "port.cc:", "oneDNN custom operations",
                  "cpu_feature_guard", "functional_saver.py", "Sharding callback duration",
                  "statecache.py", "Creating state cache", "filebasedsink.py", "Renamed 1 shards",
                  "signature_serialization.py", "unsupported characters", "INFO:tensorflow:",
                  "builder_impl.py", "fingerprinting_utils.py")


def run(module, *args):
  """`python -m module args` as run_sample.sh runs it (TF_CPP_MIN_LOG_LEVEL=2, which
  processes.command_env sets too), stderr into stdout: its lines, after it exits 0."""
  # A writable matplotlib config dir: under Bazel's sandbox HOME is read-only, and
  # matplotlib (which a library imports) warns about it, as it would on such a machine.
  env = processes.command_env({"MPLCONFIGDIR": tempfile.mkdtemp(prefix="mplconfig-")})
  done = subprocess.run([sys.executable, "-m", module, *args], cwd=processes.REPO,
                        env=env, stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, text=True, timeout=180)
  assert done.returncode == 0, done.stdout
  return done.stdout.splitlines()


def build_sample(output_dir, *args):
  return run("pipeline.build_tfrecords", "--source=image_dir",
             f"--image_dir={testdata.SAMPLE_DIR}", f"--output_dir={output_dir}", *args)


def train_sample(data_dir, model_dir, *args):
  return run("trainer.main", "--flagfile=configs/sample.flags", f"--data_dir={data_dir}",
             f"--model_dir={model_dir}", "--epochs=2", *args)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
  root = tmp_path_factory.mktemp("sample")
  beam = build_sample(root / "data")
  trainer = train_sample(root / "data", root / "simple")
  return root, beam, trainer


def is_user_line(line):
  absl = ABSL_LINE.match(line)
  if absl:
    return any(re.match(p, absl["message"]) for p in USER_LINES.get(absl["file"], ()))
  return any(re.match(p, line) for p in SUMMARY_LINES)


def test_run_sample_prints_only_the_projects_lines(sample):
  root, beam, trainer = sample
  for line in beam + trainer:
    assert not any(s in line for s in INTERNAL_LINES), line
    assert is_user_line(line), f"not one of the project's lines (add it to USER_LINES if it "\
                               f"is): {line!r}"
  assert [line.split()[0] for line in beam if not ABSL_LINE.match(line)] == [
      "Wrote", "train", "validation", "test", "rejected"]
  # The job's last progress line: every planned image done.
  assert any(ABSL_LINE.match(line)["message"].startswith(
      "build_tfrecords: 500 of 500 images (100%) in ") for line in beam if ABSL_LINE.match(line))
  messages = [ABSL_LINE.match(line)["message"] for line in trainer]
  assert [m.split(":")[0] for m in messages if m.startswith("epoch ")] == ["epoch 1/2",
                                                                           "epoch 2/2"]
  assert messages[0].startswith("--cache=auto: ")
  # The last two lines say where the results and the model are, and they are there.
  assert messages[-2:] == [f"results: {root}/simple/results.json",
                           f"model: {root}/simple/model.keras and {root}/simple/saved_model/"]
  for name in ("results.json", "model.keras", "saved_model/saved_model.pb"):
    assert (root / "simple" / name).exists()


def test_verbosity_brings_the_internals_back(sample, tmp_path):
  root, _, _ = sample
  beam = "\n".join(build_sample(tmp_path / "data", "--verbosity=1"))
  assert "Creating state cache" in beam and "Wrote " in beam
  trainer = "\n".join(train_sample(root / "data", tmp_path / "simple", "--verbosity=1",
                                   "--epochs=1"))
  for internal in ("absl::InitializeLog", "oneDNN custom operations",
                   "Sharding callback duration", "fingerprinting_utils.py"):
    assert internal in trainer
  assert "epoch 1/1: loss " in trainer and "results: " in trainer
