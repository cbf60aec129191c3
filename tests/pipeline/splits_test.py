"""Split and class-subset policy: key-hash splits, and one class rule for the job and trainer."""

import pytest

from pipeline import build_tfrecords
from pipeline import splits
from tests import testdata
from trainer import config as config_lib

CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")


def test_splits_come_from_the_key_hash():
  keys = [f"train/x/{i}.jpg" for i in range(4000)]
  a = [splits.assign_split(k, "train", 0.1, 0.2, has_test=False) for k in keys]
  b = [splits.assign_split(k, "train", 0.1, 0.2, has_test=False) for k in keys]
  assert a == b  # a rerun splits the same way
  assert 0.17 < a.count("test") / 4000 < 0.23 and 0.07 < a.count("validation") / 4000 < 0.13
  assert splits.assign_split("k", "test", 0.5, 0.5, has_test=True) == "test"
  assert {splits.assign_split(k, "train", 0.1, 0.2, True) for k in keys} == {"train",
                                                                            "validation"}


def test_class_subsets():
  names = [f"c{i}" for i in range(100)]
  picked = splits.select_classes(names, num_classes=10, class_seed=3)
  assert picked == splits.select_classes(names, num_classes=10, class_seed=3)
  assert picked != splits.select_classes(names, num_classes=10, class_seed=4)
  assert picked == sorted(picked) and len(set(picked)) == 10
  assert splits.select_classes(names, classes=["c5", "c2"]) == [5, 2]
  assert splits.select_classes(names) == list(range(100))
  with pytest.raises(splits.ClassSubsetError, match=r"\['nope'\]"):
    splits.select_classes(names, classes=["c1", "nope"])
  with pytest.raises(splits.ClassSubsetError, match="repeats a class"):
    splits.select_classes(names, classes=["c1", "c1"])
  with pytest.raises(splits.ClassSubsetError, match="--num_classes=101"):
    splits.select_classes(names, num_classes=101)


def trainer_pick(class_names, n, seed):
  config = config_lib.Config(data_dir="d", model_dir="m", classes=str(n), seed=seed)
  return [class_names[i] for i in config_lib.class_subset(config, class_names)]


def job_pick(class_names, n, seed):
  kept = splits.select_classes(class_names, num_classes=n, class_seed=seed)
  return [class_names[i] for i in kept]


@pytest.mark.parametrize("total", [10, 100])
@pytest.mark.parametrize("seed", [0, 1, 7, 12345])
def test_the_job_and_the_trainer_pick_the_same_nested_classes(total, seed):
  names = tuple(f"class{i:03d}" for i in range(total))
  previous = set()
  for n in (2, 3, 5, total // 2, total):
    job, trainer = job_pick(names, n, seed), trainer_pick(names, n, seed)
    assert job == trainer, (n, seed)
    assert len(set(job)) == n
    assert previous <= set(job), f"the {len(previous)} of seed {seed} are not among its {n}"
    previous = set(job)


def test_the_trainers_recorded_sweep_keeps_its_classes():
  # EXPERIMENTS.md's class-count sweep (CIFAR-10, --seed=0) trained on these; the shared rule
  # must keep picking them, or its results no longer say what they were run on.
  assert trainer_pick(CIFAR10, 2, 0) == ["horse", "ship"]
  assert job_pick(CIFAR10, 5, 0) == ["automobile", "cat", "dog", "horse", "ship"]


def test_the_beam_job_writes_the_classes_the_trainer_picks(tmp_path):
  config = build_tfrecords.JobConfig(
      source="image_dir", image_dir=str(testdata.SAMPLE_DIR), output_dir=str(tmp_path / "out"),
      num_classes=3, class_seed=7, num_shards=1)
  result = build_tfrecords.run_job(config)
  assert result.exit_code == 0
  assert result.info["class_names"] == trainer_pick(CIFAR10, 3, 7)
  assert result.counters["excluded/class_subset"] == 500 - 3 * 50
