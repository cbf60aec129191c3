"""tools/sweep.py: config parsing and the grid without subprocesses, then real sweeps of tiny
trainer runs on the shipped JPEGs (one that trains and is resumed, one whose runs fail)."""

import csv
import glob
import json
import os
import re

import pytest

from tests import testdata
from tools import cli
from tools import sweep
from trainer import workdir

BASE = "--epochs=1\n--steps_per_epoch=1\n--batch_size=8\n--noverify_data\n"


SMALL = {"per_class": 10}  # make_data_dir(**SMALL): 24 train, 6 validation, 30 test examples


def _write(path, text):
  path.write_text(text)
  return str(path)


def _flags_txt(run_dir):
  with open(os.path.join(run_dir, "flags.txt")) as f:
    return f.read().splitlines()


# --- parsing and the grid (no subprocess) ------------------------------------------------


def test_runs_are_the_product_of_the_sweep_lines_first_line_slowest():
  config = sweep.parse_config("--epochs=3\n"
                              "sweep --optimizer adam sgd\n"
                              "sweep --learning_rate 1e-2 1e-3 1e-4\n", "grid.sweep")
  runs = sweep.expand(config, ["--data_dir=/data"])
  assert [r.name for r in runs] == [
      "optimizer=adam,learning_rate=1e-2", "optimizer=adam,learning_rate=1e-3",
      "optimizer=adam,learning_rate=1e-4", "optimizer=sgd,learning_rate=1e-2",
      "optimizer=sgd,learning_rate=1e-3", "optimizer=sgd,learning_rate=1e-4"]
  # Base flags, then the swept ones in sweep-line order, then the command line's.
  assert runs[4].args == ("--epochs=3", "--optimizer=sgd", "--learning_rate=1e-3",
                          "--data_dir=/data")
  assert runs[4].values == {"optimizer": "sgd", "learning_rate": "1e-3"}
  assert sweep.trainer_command(runs[0], "/out/x", python="py") == [
      "py", "-m", "trainer.main", *runs[0].args, "--model_dir=/out/x"]


def test_values_are_verbatim_and_names_replace_unsafe_characters():
  config = sweep.parse_config("sweep --classes airplane,cat,dog 5 a/b:c\n")
  runs = sweep.expand(config)
  assert [r.name for r in runs] == ["classes=airplane,cat,dog", "classes=5", "classes=a_b_c"]
  assert runs[2].args == ("--classes=a/b:c",)
  assert [r.name for r in sweep.expand(sweep.parse_config("--epochs=1\n"))] == ["base"]


def test_comments_and_blank_lines_are_ignored():
  config = sweep.parse_config(
      "# Reproduces nothing in particular.\n"
      "\n"
      "   \n"
      "--epochs=2   # a trailing comment\n"
      "  # an indented comment\n"
      "--cache=/tmp/a#b\n"  # a '#' inside a value is not a comment
      "sweep --seed 0 1\t# two seeds\n")
  assert config.base_flags == ("--epochs=2", "--cache=/tmp/a#b")
  assert config.swept == (("seed", ("0", "1")),)


def test_a_relative_flagfile_is_found_in_the_current_directory_then_the_repository(
    tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  config = sweep.parse_config("--flagfile=configs/simple.flags\n")
  assert config.base_flags == (f"--flagfile={testdata.REPO / 'configs' / 'simple.flags'}",)
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "simple.flags").write_text("--epochs=1\n")
  config = sweep.parse_config("--flagfile=configs/simple.flags\n")
  assert config.base_flags == (f"--flagfile={tmp_path / 'configs' / 'simple.flags'}",)
  with pytest.raises(sweep.SweepError, match=r"x\.sweep:2: --flagfile=nowhere\.flags: "
                                             r"flagfile nowhere\.flags not found"):
    sweep.parse_config("# header\n--flagfile=nowhere.flags\n", "x.sweep")


@pytest.mark.parametrize("line", [
    "epochs=3",
    "--epochs=1 --patience=2",
    "--data_dir /data",
    "sweep --seed",
    "sweep seed 1 2",
    "sweep --seed=1 2",
    "sweeps --seed 1 2",
])
def test_a_malformed_line_is_an_error_naming_file_line_number_and_line(line):
  with pytest.raises(sweep.SweepError) as error:
    sweep.parse_config(f"# header\n\n--epochs=1\n{line}   # comment\n", "configs/x.sweep")
  assert str(error.value).startswith("configs/x.sweep:4: ")
  assert str(error.value).endswith(f"{line}   # comment")


def test_a_flag_swept_twice_is_an_error():
  with pytest.raises(sweep.SweepError, match=r"x:2: .*--seed is swept twice"):
    sweep.parse_config("sweep --seed 1 2\nsweep --seed 3\n", "x")


@pytest.mark.parametrize("text", ["sweep --seed 1 1\n", "sweep --classes a/b a_b\n"])
def test_two_runs_with_one_name_are_an_error(text):
  with pytest.raises(sweep.SweepError, match=r"two runs are both named (seed=1|classes=a_b)"):
    sweep.expand(sweep.parse_config(text, "x"))


@pytest.mark.parametrize("config_text, extra, message", [
    ("sweep --lerning_rate 0.1 0.2\n", [], r"run lerning_rate=0\.1: .*'lerning_rate'"),
    ("sweep --optimizer adam adamw\n", [], r"run optimizer=adamw: .*--optimizer=adamw"),
    ("sweep --seed 0 1\n", ["--batch_sise=8"], r"run seed=0: .*'batch_sise'"),
    ("sweep --seed 0 1\n", ["--epochs=many"], r"run seed=0: .*--epochs=many"),
])
def test_a_flag_the_trainer_rejects_stops_the_sweep_before_any_run(tmp_path, config_text, extra,
                                                                   message):
  config = _write(tmp_path / "x.sweep", BASE + config_text)
  out_dir = tmp_path / "out"
  with pytest.raises(SystemExit) as error:
    sweep.COMMAND.call([f"--config={config}", f"--out_dir={out_dir}", "--data_dir=/data",
                        *extra])  # --out_dir: the old spelling of --output_dir
  assert str(error.value).startswith("tools.sweep: error: ")
  assert "\n" not in str(error.value)
  assert re.search(message, str(error.value)), str(error.value)
  assert not out_dir.exists()


@pytest.mark.parametrize("config_text, extra", [
    ("sweep --seed 0 1\n", ["--model_dir=/tmp/run"]),
    ("sweep --seed 0 1\n", ["--model_dir", "/tmp/run"]),
    ("--model_dir=/tmp/run\nsweep --seed 0 1\n", []),
    ("sweep --model_dir a b\n", []),
])
def test_model_dir_is_the_sweeps_to_set(tmp_path, config_text, extra):
  config = _write(tmp_path / "x.sweep", config_text)
  with pytest.raises(SystemExit, match=r"^tools\.sweep: error: .*--model_dir"):
    sweep.COMMAND.call([f"--config={config}", f"--out_dir={tmp_path / 'out'}", *extra])
  assert not (tmp_path / "out").exists()


def test_dry_run_prints_every_command_and_what_it_would_skip_and_runs_nothing(tmp_path, capsys):
  config = _write(tmp_path / "x.sweep", BASE + "sweep --learning_rate 0.01 0.001\n")
  out_dir = tmp_path / "out"
  (out_dir / "learning_rate=0.001").mkdir(parents=True)
  workdir.write_results(workdir.RunDirs(str(out_dir / "learning_rate=0.001")), dict.fromkeys(
      workdir.RESULTS_FIELDS, 0))
  sweep.COMMAND.call([f"--config={config}", f"--output_dir={out_dir}", "--data_dir=/data",
                      "--dry_run"])
  out = capsys.readouterr().out
  assert "2 run(s)" in out and "1 finished earlier" in out
  assert "[1/2] learning_rate=0.01: would train" in out
  assert "[2/2] learning_rate=0.001: finished earlier, would be skipped" in out
  assert (" -m trainer.main --epochs=1 --steps_per_epoch=1 --batch_size=8 --noverify_data "
          f"--learning_rate=0.01 --data_dir=/data --model_dir={out_dir}/learning_rate=0.01"
          in out)
  assert sorted(os.listdir(out_dir)) == ["learning_rate=0.001"]  # nothing written


# --- real trainer runs ---------------------------------------------------------------------


def test_a_sweep_trains_every_run_collects_results_and_skips_them_when_rerun(
    tmp_path, make_data_dir, monkeypatch, capsys):
  # Started outside the repository with a relative --data_dir: the runs start in this
  # directory too, so it names the same data for them (and trainer.main still imports).
  data_path = make_data_dir(**SMALL)
  monkeypatch.chdir(os.path.dirname(data_path))
  data_dir = os.path.basename(data_path)
  config = _write(tmp_path / "lr.sweep",
                  "# Two learning rates.\n" + BASE + "sweep --learning_rate 0.01 0.001\n")
  out_dir = tmp_path / "out"
  argv = [f"--config={config}", f"--output_dir={out_dir}", f"--data_dir={data_dir}"]
  sweep.COMMAND.call(argv)
  out = capsys.readouterr().out
  assert "2 run(s)" in out and "0 finished earlier" in out
  names = ["learning_rate=0.01", "learning_rate=0.001"]
  results, mtimes = {}, {}
  for k, (name, value) in enumerate(zip(names, ["0.01", "0.001"]), start=1):
    run_dir = out_dir / name
    assert f"[{k}/2] {name}: training (log: {run_dir / 'train.log'})" in out
    assert f"[{k}/2] {name}: done in " in out
    results[name] = json.loads((run_dir / "results.json").read_text())
    mtimes[name] = (run_dir / "results.json").stat().st_mtime_ns
    assert f"test_accuracy {results[name]['test_accuracy']:.4f}" in out
    flags = _flags_txt(run_dir)
    assert f"--learning_rate={value}" in flags
    assert f"--data_dir={data_dir}" in flags and f"--model_dir={run_dir}" in flags
    assert "test_loss" in (run_dir / "train.log").read_text()

  with open(out_dir / "sweep.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["run"] for r in rows] == names
  assert [r["learning_rate"] for r in rows] == ["0.01", "0.001"]
  assert [r["status"] for r in rows] == ["done", "done"]
  for row in rows:
    assert float(row["test_accuracy"]) == results[row["run"]]["test_accuracy"]
    assert float(row["test_loss"]) == results[row["run"]]["test_loss"]
    assert int(row["epochs_run"]) == 1
  summary = json.loads((out_dir / "sweep.json").read_text())
  assert summary["config"] == config
  assert summary["base_flags"] == BASE.split()
  assert [r["status"] for r in summary["runs"]] == ["done", "done"]
  assert (out_dir / "sweep.config").read_text() == (tmp_path / "lr.sweep").read_text()

  # Rerun, with a changed header comment: a warning, and both runs skipped untouched.
  config = _write(tmp_path / "lr.sweep",
                  "# Two learning rates, again.\n" + BASE + "sweep --learning_rate 0.01 0.001\n")
  sweep.COMMAND.call(argv)
  captured = capsys.readouterr()
  assert "2 finished earlier" in captured.out
  assert "[1/2] learning_rate=0.01: finished earlier, skipped" in captured.out
  assert "[2/2] learning_rate=0.001: finished earlier, skipped" in captured.out
  assert "sweep: warning:" in captured.err and "sweep.config" in captured.err
  for name in names:
    assert (out_dir / name / "results.json").stat().st_mtime_ns == mtimes[name]
  with open(out_dir / "sweep.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["status"] for r in rows] == ["skipped", "skipped"]
  assert [float(r["test_accuracy"]) for r in rows] == [
      results[n]["test_accuracy"] for n in names]
  assert (out_dir / "sweep.config").read_text() == (tmp_path / "lr.sweep").read_text()


def test_failed_runs_are_reported_the_sweep_goes_on_and_exits_non_zero(
    tmp_path, make_data_dir, capsys):
  data_dir = make_data_dir(**SMALL)
  # Both batch sizes exceed the 24 train examples: each trainer exits 1 before training.
  config = _write(tmp_path / "bad.sweep", BASE + "sweep --batch_size 1000 2000\n")
  out_dir = tmp_path / "out"
  with pytest.raises(SystemExit) as error:
    sweep.COMMAND.call([f"--config={config}", f"--output_dir={out_dir}",
                        f"--data_dir={data_dir}"])
  assert str(error.value) == ("tools.sweep: error: 2 of 2 run(s) failed: batch_size=1000, "
                              "batch_size=2000")
  out = capsys.readouterr().out
  for k, size in enumerate([1000, 2000], start=1):
    log = out_dir / f"batch_size={size}" / "train.log"
    assert f"[{k}/2] batch_size={size}: FAILED (exit 1), see {log}" in out
    assert f"--batch_size={size} is larger than the train split" in log.read_text()
    assert not (out_dir / f"batch_size={size}" / "results.json").exists()
  assert "is larger than the train split" in out  # the log's last lines
  with open(out_dir / "sweep.csv") as f:
    assert [r["status"] for r in csv.DictReader(f)] == ["failed", "failed"]
  assert "failed" in out.splitlines()[-2]  # the table


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(cli.REPO, "configs", "*.sweep"))),
                         ids=os.path.basename)
def test_every_shipped_sweep_config_parses_and_its_runs_flags_check(path):
  # A typo in a committed config (or a flagfile it names) fails here, not hours into a grid.
  runs = sweep.expand(sweep.load_config(path), ["--data_dir=DATA"], cwd=str(cli.REPO))
  assert runs
  sweep.validate(runs, "/tmp/out")
