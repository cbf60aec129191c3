"""trainer/workdir.py: every run-directory file read back as it was written, and the readers'
errors naming the bad file."""

import dataclasses

import numpy as np
import pytest

from trainer import config as config_lib
from trainer import workdir


@pytest.fixture
def dirs(tmp_path):
  return workdir.RunDirs(str(tmp_path))


def test_flagfile_text_lists_every_setting():
  config = config_lib.Config(data_dir="d", model_dir="m", augment=False, cache="")
  text = workdir.flagfile_text(config)
  assert "--noaugment\n" in text and "--cache=\n" in text
  assert len(text.splitlines()) == len(dataclasses.fields(config_lib.Config))


def test_flags_read_back_as_written(dirs):
  config = config_lib.Config(data_dir="gs://b/d", model_dir=dirs.model_dir, augment=False,
                             deterministic=True, learning_rate=3e-4, classes="cat,dog")
  assert workdir.write_flags(dirs, config) == []  # a new run: nothing differs
  flags = workdir.read_flags(dirs.model_dir)
  assert list(flags) == [f.name for f in dataclasses.fields(config_lib.Config)]
  assert (flags["augment"], flags["deterministic"], flags["learning_rate"], flags["classes"],
          flags["cache"], flags["data_dir"]) == ("false", "true", "0.0003", "cat,dog", "auto",
                                                 "gs://b/d")
  assert workdir.read_flags(dirs.model_dir + "/nothing") is None


def test_rewriting_flags_returns_what_changed(dirs):
  workdir.write_flags(dirs, config_lib.Config(data_dir="d", model_dir="m", epochs=2))
  changed = workdir.write_flags(
      dirs, config_lib.Config(data_dir="d", model_dir="m", epochs=4, augment=False))
  assert changed == [("epochs", "2", "4"), ("augment", "true", "false")]


def test_flag_differences_pair_lines_by_flag():
  old = config_lib.Config(data_dir="d", model_dir="m", epochs=2, augment=True)
  new = config_lib.Config(data_dir="d", model_dir="m", epochs=4, augment=False)
  assert workdir.flag_differences(workdir.flagfile_text(old), workdir.flagfile_text(new)) == [
      ("epochs", "2", "4"), ("augment", "true", "false")]
  assert workdir.flag_differences("# a comment\n--seed=1\n", "--seed=1\n--cache=x\n") == [
      ("cache", None, "x")]


def test_history_reads_back_and_stops_at_an_epoch(dirs):
  rows = [{"epoch": e, "loss": 1.0 / e, "accuracy": 0.1 * e, "val_loss": 2.0 / e,
           "val_accuracy": 0.05 * e, "time": 1.25, "learning_rate": 1e-3 / e}
          for e in (1, 2, 3)]
  workdir.write_history(dirs, rows)
  assert workdir.read_history(dirs.model_dir) == rows
  assert workdir.read_history(dirs.model_dir, up_to_epoch=2) == rows[:2]
  # Read and written again, the file is byte for byte what it was (a resumed run rewrites it).
  text = (open(dirs.file(workdir.HISTORY_FILE)).read())
  assert workdir.history_text(workdir.read_history(dirs.model_dir)) == text
  assert workdir.read_history(dirs.model_dir + "/nothing") == []


def test_a_history_from_before_learning_rate_still_reads_and_extends(dirs):
  # Runs before --lr_schedule wrote no learning_rate column (and older ones no time).
  with open(dirs.file(workdir.HISTORY_FILE), "w") as f:
    f.write("epoch,loss,accuracy,val_loss,val_accuracy,time\n1,0.5,0.5,0.6,0.4,2.5\n")
  [old] = workdir.read_history(dirs.model_dir)
  assert old == {"epoch": 1, "loss": 0.5, "accuracy": 0.5, "val_loss": 0.6,
                 "val_accuracy": 0.4, "time": 2.5}
  new = {**old, "epoch": 2, "learning_rate": 1e-4}
  workdir.write_history(dirs, [old, new])  # a resumed run: the old row's rate left empty
  assert workdir.read_history(dirs.model_dir) == [old, new]


def test_a_malformed_history_names_the_file_and_line(dirs):
  with open(dirs.file(workdir.HISTORY_FILE), "w") as f:
    f.write("epoch,loss,accuracy,val_loss,val_accuracy,time\n1,0.5,0.5,0.5,0.5,1\n2,x,1,1,1,1\n")
  with pytest.raises(workdir.RunDirError, match=r"history.csv: line 3: loss is not a number"):
    workdir.read_history(dirs.model_dir)


def test_results_read_back_and_need_every_field(dirs):
  results = {k: 1 for k in workdir.RESULTS_FIELDS}
  workdir.write_results(dirs, results)
  assert workdir.read_results(dirs.model_dir) == results
  assert list(workdir.read_results(dirs.model_dir)) == list(workdir.RESULTS_FIELDS)
  with pytest.raises(ValueError, match="RESULTS_FIELDS"):
    workdir.write_results(dirs, {"test_loss": 1})
  assert workdir.read_results(dirs.model_dir + "/nothing") is None


def test_confusion_matrix_reads_back(dirs):
  workdir.write_confusion_matrix(dirs, ["cat", "dog"], [[3, 1], [0, 4]])
  names, counts = workdir.read_confusion_matrix(dirs.model_dir)
  assert names == ["cat", "dog"]
  np.testing.assert_array_equal(counts, [[3, 1], [0, 4]])


def test_only_the_chief_writes_into_model_dir(tmp_path):
  worker = workdir.RunDirs(str(tmp_path), chief=False, worker_index=1)
  assert worker.write_root == f"{tmp_path}/.worker1"
  workdir.write_flags(worker, config_lib.Config(data_dir="d", model_dir="m"))
  workdir.write_history(worker, [])
  workdir.write_results(worker, {k: 1 for k in workdir.RESULTS_FIELDS})
  workdir.write_confusion_matrix(worker, ["a"], [[1]])
  assert list(tmp_path.iterdir()) == []
  assert not workdir.is_run_dir(str(tmp_path))


def test_parse_flags_booleans_and_empty_values():
  # A bare --X is true and --noX false; an empty value stays empty; comments are skipped.
  first = workdir.parse_flags("--augment\n--nomixed_precision\n--lr=0.1\n--cache=\n")
  second = workdir.parse_flags("--noaugment\n--mixed_precision\n--lr=0.2\n--cache=/tmp/c\n"
                               "# a comment\n")
  assert first == {"augment": "true", "mixed_precision": "false", "lr": "0.1", "cache": ""}
  assert second == {"augment": "false", "mixed_precision": "true", "lr": "0.2",
                    "cache": "/tmp/c"}


def test_run_dirs_under_a_parent_and_training_started(tmp_path):
  for name in ("b", "a", ".hidden"):
    (tmp_path / name).mkdir()
    workdir.write_history(workdir.RunDirs(str(tmp_path / name)), [])
  (tmp_path / "crashed").mkdir()
  (tmp_path / "note.txt").write_text("not a directory")
  runs, others = workdir.run_dirs_under(str(tmp_path))
  assert runs == [f"{tmp_path}/a", f"{tmp_path}/b"]
  assert others == [f"{tmp_path}/crashed"]
  assert not workdir.training_started(str(tmp_path / "a"))
  workdir.summary_writers(workdir.RunDirs(str(tmp_path / "a")))
  assert workdir.training_started(str(tmp_path / "a"))
