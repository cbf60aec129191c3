"""The installable package: pyproject.toml's pins are requirements.txt's, and the wheel alone
runs the Beam job on several worker processes, away from the checkout.

Remote Beam workers (Dataflow, Flink, Spark) import `pipeline.*` from this package, never from
a checkout; the multi-processing DirectRunner's workers are the nearest runnable stand-in:
they are fresh processes that find the code only where PYTHONPATH points, here the installed
wheel.
"""

import glob
import os
import re
import shutil
import subprocess
import sys
import tomllib

import pytest

from pipeline import dataset_info
from pipeline import features
from tests import testdata

REPO = testdata.REPO


def pinned(lines):
  """{normalized name[extras]: version} of `name==version` requirement lines."""
  pins = {}
  for line in lines:
    line = line.split("#", 1)[0].strip()
    if not line:
      continue
    name, version = line.split("==")
    pins[re.sub(r"[-_.]+", "-", name.strip().lower())] = version.strip()
  return pins


def test_pyproject_pins_are_requirements_txt():
  with open(REPO / "pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
  with open(REPO / "requirements.txt") as f:
    requirements = pinned(f)
  assert pinned(project["dependencies"]) == requirements


def build_wheel(tmp_path):
  """The wheel of the checkout's pyproject.toml, built offline from a copy (setuptools
  writes build/ and *.egg-info/ beside the sources, which must not land in the checkout)."""
  src = tmp_path / "src"
  src.mkdir()
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(REPO / name, src / name)
  ignore = shutil.ignore_patterns("__pycache__", "sample_data")
  for package in ("pipeline", "trainer"):
    shutil.copytree(REPO / package, src / package, ignore=ignore)
  dist = tmp_path / "dist"
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "--quiet", "-w", str(dist), str(src)], check=True, capture_output=True)
  (wheel,) = glob.glob(str(dist / "*.whl"))
  return wheel


def sample_subset(root, per_class):
  """`per_class` JPEGs of two classes from each split of the shipped sample, as an
  image_dir tree."""
  for split in ("train", "test"):
    for name in ("cat", "ship"):
      files = sorted((testdata.SAMPLE_DIR / split / name).iterdir())[:per_class]
      (root / split / name).mkdir(parents=True)
      for f in files:
        shutil.copy(f, root / split / name / f.name)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """(wheel, site): the wheel and the folder it is installed in, with its console scripts in
  site/bin."""
  tmp = tmp_path_factory.mktemp("package")
  wheel = build_wheel(tmp)
  site = tmp / "site"
  subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet",
                  "--target", str(site), wheel], check=True, capture_output=True)
  return wheel, site


def only_the_package(site):
  """The environment of a process that finds this project only in `site`."""
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env["PYTHONPATH"] = str(site)
  return env


def test_installed_wheel_runs_the_job_on_two_worker_processes(installed, tmp_path):
  wheel, site = installed
  assert not (site / "pipeline" / "sample_data").exists()  # code only, no data

  # Beam's stager takes the wheel as it would for a remote runner (README: Runners).
  from apache_beam.options.pipeline_options import PipelineOptions
  from apache_beam.runners.portability.stager import Stager
  staging = tmp_path / "staging"
  staging.mkdir()
  Stager.create_job_resources(
      PipelineOptions([f"--extra_package={wheel}", "--sdk_location=container"]), str(staging))
  assert (staging / "extra_packages.txt").read_text().split() == [os.path.basename(wheel)]

  images = tmp_path / "images"
  sample_subset(images, per_class=10)  # 40 JPEGs: 20 train, 20 test
  work = tmp_path / "work"  # the current directory: outside the checkout
  work.mkdir()
  env = only_the_package(site)
  where = subprocess.run(
      [sys.executable, "-c", "import pipeline, trainer; print(pipeline.__file__); "
       "print(trainer.__file__)"], cwd=work, env=env, check=True, capture_output=True,
      text=True).stdout.split()
  assert all(path.startswith(str(site)) for path in where), where

  out = tmp_path / "out"
  job = subprocess.run(
      [str(site / "bin" / "build-tfrecords"), "--source=image_dir", f"--image_dir={images}",
       f"--output_dir={out}", "--num_shards=2", "--validation_fraction=0.25",
       "--direct_running_mode=multi_processing", "--direct_num_workers=2"],
      cwd=work, env=env, capture_output=True, text=True, timeout=120)
  assert job.returncode == 0, job.stderr[-3000:]

  info = dataset_info.load(str(out))
  assert info.class_names == ("cat", "ship")
  assert {n: s.num_examples for n, s in info.splits.items()} == {
      "train": sum(info.splits["train"].per_class),
      "validation": sum(info.splits["validation"].per_class), "test": 20}
  assert info.splits["train"].num_examples + info.splits["validation"].num_examples == 20
  assert info.splits["validation"].num_examples > 0
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  for name, split in info.splits.items():
    assert [os.path.basename(s) for s in split.shards] == [
        features.shard_name(name, i, 2) for i in range(2)]
    records = [features.parse_single(r) for r in tf.data.TFRecordDataset(list(split.shards))]
    assert len(records) == split.num_examples
    assert all(r[features.FORMAT].numpy() == b"jpeg" for r in records)


def test_train_entry_point_is_installed(installed, tmp_path):
  """The `train` script of the wheel starts the trainer's command line."""
  _, site = installed
  shown = subprocess.run([str(site / "bin" / "train"), "--helpfull"], cwd=tmp_path,
                         env=only_the_package(site), capture_output=True, text=True,
                         timeout=120)
  # A help request is exit status 0 (pipeline/command_line.py); the flags listed are the
  # trainer's.
  assert shown.returncode == 0, shown.stderr[-2000:]
  assert "trainer.main:" in shown.stdout, shown.stderr[-2000:]
  assert "--data_dir" in shown.stdout and "--model_dir" in shown.stdout
