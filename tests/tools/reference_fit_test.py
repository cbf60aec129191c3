"""tools/reference_fit.py: the report's Keras compile/fit loop on a real data directory,
written where tools.report reads the trainer's runs."""

import pytest

from pipeline import dataset_info
from tools import reference_fit
from tools import report_runs
from trainer import workdir


def test_fit_trains_early_stops_on_val_loss_and_writes_what_report_reads(data_dir, tmp_path):
  run_dir = str(tmp_path / "fit")
  assert reference_fit.COMMAND.call([
      f"--data_dir={data_dir}", f"--model_dir={run_dir}", "--model=simple",
      "--epochs=8", "--patience=1", "--learning_rate=3e-3", "--batch_size=32"]) == 0
  info = dataset_info.load(data_dir)
  results = workdir.read_results(run_dir)
  history = workdir.read_history(run_dir)
  assert results["strategy"] == "keras_fit" and results["model"] == "simple"
  assert results["test_examples"] == info.split("test").num_examples
  assert results["class_names"] == list(info.class_names)
  assert [r["epoch"] for r in history] == list(range(1, results["epochs_run"] + 1))
  best = min(history, key=lambda r: r["val_loss"])
  assert results["best_epoch"] == best["epoch"]
  assert results["best_val_loss"] == pytest.approx(best["val_loss"])
  # Keras' EarlyStopping with patience 1 stops at the first epoch without a lower val_loss.
  if results["stopped_early"]:
    assert results["epochs_run"] == results["best_epoch"] + 1
  else:
    assert results["epochs_run"] == 8
  assert 0.0 <= results["test_accuracy"] <= 1.0 and results["test_loss"] > 0
  run, = report_runs.load_runs([run_dir])
  assert run.finished and run.best_epoch == results["best_epoch"]


def test_validating_on_test_restores_and_tests_the_best_epoch_on_the_test_images(data_dir,
                                                                               tmp_path):
  """Keras' own protocol: the best epoch is chosen on the test images, so the test accuracy
  is that epoch's validation accuracy (the restored weights, the same images)."""
  run_dir = str(tmp_path / "fit")
  logged = []
  results = reference_fit.run(data_dir, run_dir, model_name="simple", epochs=4, patience=4,
                              batch_size=32, learning_rate=3e-3, validation_split="test",
                              log=logged.append)
  info = dataset_info.load(data_dir)
  assert f"{info.split('test').num_examples:,} test (validation)" in logged[0]
  history = workdir.read_history(run_dir)
  assert results["epochs_run"] == 4 and len(history) == 4
  best = min(history, key=lambda r: r["val_loss"])
  assert results["best_epoch"] == best["epoch"]
  assert results["test_loss"] == pytest.approx(best["val_loss"], rel=1e-4)
  assert results["test_accuracy"] == pytest.approx(best["val_accuracy"], abs=1e-6)


def test_mistakes_are_one_line_naming_the_flag(data_dir, tmp_path):
  with pytest.raises(SystemExit, match=f"^tools.reference_fit: error: --data_dir={tmp_path}/absent"):
    reference_fit.COMMAND.call([f"--data_dir={tmp_path}/absent", f"--model_dir={tmp_path}/r"])
  with pytest.raises(SystemExit, match="--model=nonet: expected one of .*basic"):
    reference_fit.COMMAND.call([f"--data_dir={data_dir}", f"--model_dir={tmp_path}/r",
                                "--model=nonet"])
  with pytest.raises(SystemExit, match="--model_dir"):
    reference_fit.COMMAND.call([f"--data_dir={data_dir}"])
