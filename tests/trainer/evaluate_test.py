"""trainer.evaluate on a real trained run: on the run's own data and test split it gives
results.json's test figures and confusion_matrix.csv."""

import json

from absl import flags
import pytest

from tests.trainer import trained_run
from trainer import evaluate
from trainer import workdir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_dir):
  return trained_run.model_dir(tmp_path_factory, data_dir)


def _run(argv, capsys):
  flag_values = flags.FlagValues()
  evaluate.define_flags(flag_values)
  status = evaluate.run_command(flag_values(["trainer.evaluate", *argv]), flag_values)
  return status, capsys.readouterr().out


def test_evaluate_reproduces_results_json_on_the_runs_test_split(run_dir, data_dir, capsys):
  status, out = _run([f"--model_dir={run_dir}", f"--data_dir={data_dir}", "--json"], capsys)
  assert status == 0
  metrics = json.loads(out)
  results = workdir.read_results(run_dir)
  assert metrics["split"] == "test" and metrics["examples"] == results["test_examples"] == 30
  assert metrics["loss"] == pytest.approx(results["test_loss"], rel=1e-5)
  assert metrics["accuracy"] == pytest.approx(results["test_accuracy"], abs=1e-9)
  names, confusion = workdir.read_confusion_matrix(run_dir)
  assert metrics["class_names"] == names == results["class_names"]
  assert metrics["confusion"] == confusion.tolist()
  assert metrics["per_class_accuracy"] == pytest.approx(
      [row[i] / row.sum() for i, row in enumerate(confusion)])

  # The report shows the same figures, results.json's beside them, and the matrix.
  status, out = _run([f"--model_dir={run_dir}", f"--data_dir={data_dir}"], capsys)
  lines = out.splitlines()
  assert lines[0] == (f"test: loss {results['test_loss']:.4f}, accuracy "
                      f"{results['test_accuracy']:.4f} (30 examples)")
  assert lines[1] == (f"results.json (when trained): test_loss {results['test_loss']:.4f}, "
                      f"test_accuracy {results['test_accuracy']:.4f}")
  row = lines[-3].split()
  assert row[0] == names[0] and [int(c) for c in row[1:]] == confusion[0].tolist()


def test_data_with_more_classes_is_scored_on_the_models_and_a_missing_class_is_named(
    run_dir, make_data_dir, capsys):
  # The same test images plus a fourth class: the model's three are picked out by name.
  wider = make_data_dir(classes=("bird", "cat", "airplane", "automobile"))
  status, out = _run([f"--model_dir={run_dir}", f"--data_dir={wider}", "--json"], capsys)
  results = workdir.read_results(run_dir)
  metrics = json.loads(out)
  assert metrics["examples"] == 30
  assert metrics["loss"] == pytest.approx(results["test_loss"], rel=1e-5)

  narrower = make_data_dir(classes=("airplane", "cat"))
  with pytest.raises(evaluate.EvaluateError, match=r"has no class automobile, bird of the "
                     r"model's 3 \(the data's: airplane, cat\)"):
    _run([f"--model_dir={run_dir}", f"--data_dir={narrower}"], capsys)
  with pytest.raises(evaluate.EvaluateError, match="--data_dir is required"):
    _run([f"--model_dir={run_dir}"], capsys)
