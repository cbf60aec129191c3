"""Real (tiny) training runs through trainer.train: artifacts, early stopping, resuming.

Data: 96 train / 24 validation / 30 test real CIFAR-10 images of 3 classes
(tests.testdata). Runs use the one-device strategy in this process; the mirrored and
multi-process paths are in strategy_test.py and main_test.py; the steps alone in
steps_test.py.
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline import dataset_info
from trainer import config as config_lib
from trainer import input_pipeline
from trainer import steps as steps_lib
from trainer import strategy as strategy_lib
from trainer import train as train_lib
from trainer import workdir


@pytest.fixture(scope="module")
def strategy():
  return strategy_lib.make_strategy("one_device")


def _config(data_dir, model_dir, **overrides):
  settings = dict(data_dir=data_dir, model_dir=str(model_dir), batch_size=16, epochs=2,
                  steps_per_epoch=2, learning_rate=1e-3)
  settings.update(overrides)
  return config_lib.Config(**settings)


def _history(model_dir):
  return workdir.read_history(str(model_dir))


def _test_split(data_dir):
  """All test images and labels, straight from the pipeline (no padding rows)."""
  info = dataset_info.load(data_dir)
  ds, _ = input_pipeline.eval_dataset(info, "test", batch_size=64)
  images, labels, weights = (np.concatenate(x) for x in zip(*ds.as_numpy_iterator()))
  keep = weights > 0
  return images[keep].astype("float32"), labels[keep]


def _scalars(event_dir):
  """{tag: {step: value}} of the scalars in the TensorBoard event files in `event_dir` (the
  images and text beside them are schedules_test.py's)."""
  out = {}
  for name in tf.io.gfile.listdir(event_dir):
    for event in tf.compat.v1.train.summary_iterator(os.path.join(event_dir, name)):
      for value in event.summary.value:
        array = tf.make_ndarray(value.tensor)
        if array.ndim == 0 and array.dtype.kind == "f":
          out.setdefault(value.tag, {})[event.step] = float(array)
  return out


def test_a_run_writes_results_history_exports_and_summaries(data_dir, strategy, tmp_path):
  model_dir = tmp_path / "run"
  results = train_lib.train_and_evaluate(_config(data_dir, model_dir), strategy)

  on_disk = json.loads((model_dir / "results.json").read_text())
  assert on_disk == results
  assert results["epochs_run"] == 2 and results["test_examples"] == 30
  assert results["class_names"] == ["airplane", "automobile", "bird"]
  assert results["num_replicas"] == 1 and results["strategy"] == "one_device"
  assert results["examples_per_s"] > 0 and not results["stopped_early"]
  history = _history(model_dir)
  assert [r["epoch"] for r in history] == [1, 2]
  header = (model_dir / "history.csv").read_text().splitlines()[0]
  assert header.split(",") == list(workdir.HISTORY_FIELDS)
  best = history[results["best_epoch"] - 1]
  assert best["val_loss"] == pytest.approx(results["best_val_loss"])

  # The exported models hold the best weights: scoring the test split with them gives
  # the test metrics the run reported.
  images, labels = _test_split(data_dir)
  model = keras.models.load_model(model_dir / "model.keras")
  probs = np.asarray(model.predict(images, verbose=0))
  loss = float(np.mean(keras.losses.sparse_categorical_crossentropy(labels, probs)))
  assert loss == pytest.approx(results["test_loss"], rel=1e-4)
  assert np.mean(probs.argmax(1) == labels) == pytest.approx(results["test_accuracy"])
  saved_model = tf.saved_model.load(str(model_dir / "saved_model"))  # keep it referenced
  served = saved_model.serve(images)
  np.testing.assert_allclose(np.asarray(served), probs, rtol=1e-4, atol=1e-6)

  # flags.txt is the config in flagfile form.
  flags_text = (model_dir / "flags.txt").read_text()
  assert f"--model_dir={model_dir}\n" in flags_text and "--batch_size=16\n" in flags_text
  assert "--augment\n" in flags_text

  train = _scalars(model_dir / "tensorboard" / "train")
  val = _scalars(model_dir / "tensorboard" / "validation")
  assert train["loss"][2] == pytest.approx(history[1]["loss"], rel=1e-6)
  assert val["accuracy"][1] == pytest.approx(history[0]["val_accuracy"], rel=1e-6)
  test = _scalars(model_dir / "tensorboard" / "test")
  assert test["accuracy"][results["best_epoch"]] == pytest.approx(results["test_accuracy"])


def test_early_stopping_stops_when_validation_loss_cannot_improve(data_dir, strategy,
                                                                  tmp_path):
  # learning_rate=0: the weights never change, so epochs 2, 3... repeat epoch 1's validation
  # loss exactly; with patience 2 the run must stop after epoch 3 of the allowed 20.
  config = _config(data_dir, tmp_path / "run", learning_rate=0.0, patience=2, epochs=20,
                   augment=False)
  results = train_lib.train_and_evaluate(config, strategy)
  assert results["stopped_early"]
  assert results["epochs_run"] == 3
  assert results["best_epoch"] == 1
  val_losses = {r["val_loss"] for r in _history(tmp_path / "run")}
  assert len(val_losses) == 1


def test_a_rerun_resumes_from_the_checkpoint(data_dir, strategy, tmp_path):
  model_dir = tmp_path / "run"
  first = train_lib.train_and_evaluate(_config(data_dir, model_dir, epochs=2), strategy)
  first_history = _history(model_dir)
  second = train_lib.train_and_evaluate(_config(data_dir, model_dir, epochs=4), strategy)

  assert (first["epochs_run"], first["resumed_from_epoch"]) == (2, 0)
  assert (second["epochs_run"], second["resumed_from_epoch"]) == (4, 2)
  history = _history(model_dir)
  assert [r["epoch"] for r in history] == [1, 2, 3, 4]
  # Epochs 1-2 were not trained again: their rows (down to the timings) are the first run's.
  assert history[:2] == first_history
  # The optimizer's state came back too: its step counter counts all 4 epochs x 2 steps.
  reader = tf.train.load_checkpoint(str(model_dir / "checkpoints"))
  iterations = [k for k in reader.get_variable_to_shape_map()
                if k.startswith("optimizer/") and "iteration" in k]
  assert iterations, reader.get_variable_to_shape_map()
  assert int(reader.get_tensor(iterations[0])) == 8
  assert int(reader.get_tensor("epoch/.ATTRIBUTES/VARIABLE_VALUE")) == 4


def test_an_epoch_longer_than_one_call_runs_every_step(data_dir, strategy, tmp_path):
  # 96 examples / batch 4 = 24 steps: one call of steps.STEPS_PER_CALL (20) steps and one
  # of 4; both must run.
  assert 20 == steps_lib.STEPS_PER_CALL < 24
  model_dir = tmp_path / "run"
  train_lib.train_and_evaluate(_config(data_dir, model_dir, batch_size=4, epochs=1,
                                       steps_per_epoch=0), strategy)
  reader = tf.train.load_checkpoint(str(model_dir / "checkpoints"))
  iterations = [k for k in reader.get_variable_to_shape_map()
                if k.startswith("optimizer/") and "iteration" in k]
  assert int(reader.get_tensor(iterations[0])) == 24


def test_a_rerun_drops_history_rows_past_the_checkpoint(data_dir, strategy, tmp_path):
  # A run killed after writing epoch 3's history row but before its checkpoint: the rerun
  # trains epoch 3 again and history.csv ends up with each epoch once.
  model_dir = tmp_path / "run"
  train_lib.train_and_evaluate(_config(data_dir, model_dir, epochs=2), strategy)
  with open(model_dir / "history.csv", "a") as f:
    f.write("3,9,9,9,9,9\n")
  train_lib.train_and_evaluate(_config(data_dir, model_dir, epochs=3), strategy)
  history = _history(model_dir)
  assert [r["epoch"] for r in history] == [1, 2, 3]
  assert history[2]["loss"] != 9


def test_a_checkpoint_of_another_model_is_refused_by_name(data_dir, strategy, tmp_path):
  train_lib.train_and_evaluate(_config(data_dir, tmp_path / "run", epochs=1), strategy)
  with pytest.raises(config_lib.ConfigError, match="--model_dir=.*new --model_dir"):
    train_lib.train_and_evaluate(
        _config(data_dir, tmp_path / "run", epochs=2, model="basic"), strategy)


def test_mixed_precision_trains_in_bfloat16_on_cpu(data_dir, strategy, tmp_path):
  config = _config(data_dir, tmp_path / "run", model="basic", mixed_precision=True,
                   epochs=1, steps_per_epoch=1)
  results = train_lib.train_and_evaluate(config, strategy)
  assert results["dtype_policy"] == "mixed_bfloat16"
  assert np.isfinite(results["test_loss"])
  assert np.isfinite(_history(tmp_path / "run")[0]["loss"])
  model = keras.models.load_model(tmp_path / "run" / "model.keras")
  assert model.layers[1].compute_dtype == "bfloat16"
  assert model.layers[-1].compute_dtype == "float32"
  assert keras.config.dtype_policy().name == "float32"  # not leaked to later runs


def test_image_size_resizes_for_training_and_export(data_dir, strategy, tmp_path):
  config = _config(data_dir, tmp_path / "run", image_size=20, epochs=1, steps_per_epoch=1)
  train_lib.train_and_evaluate(config, strategy)
  model = keras.models.load_model(tmp_path / "run" / "model.keras")
  assert model.input_shape == (None, 20, 20, 3)


def test_batch_size_larger_than_the_train_split_names_the_flag(data_dir, strategy, tmp_path):
  with pytest.raises(config_lib.ConfigError, match=r"--batch_size=200 .* train split \(96"):
    train_lib.train_and_evaluate(_config(data_dir, tmp_path / "run", batch_size=200), strategy)
