"""--lr_schedule (trainer/schedules.py) and the TensorBoard summaries (trainer/summaries.py).

The schedules' values are checked eagerly; then two real tiny runs (one device, the default
test data, 2 steps of 16 images an epoch): a cosine run with warmup whose history.csv and
event files are read back (the events with TensorBoard's own loader), and a plateau run
stopped after 3 epochs and rerun, whose reduced rate survives the restart.
"""

import math

import keras
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from trainer import checkpoints as checkpoints_lib
from trainer import config as config_lib
from trainer import models
from trainer import schedules
from trainer import strategy as strategy_lib
from trainer import train as train_lib
from trainer import workdir

BASE = 1e-3


def _schedule(kind, **overrides):
  settings = dict(kind=kind, base_rate=BASE, steps_per_epoch=10, epochs=5)
  settings.update(overrides)
  return schedules.Schedule(**settings)


def _rates(schedule, steps, factor=1.0):
  return [float(schedule.rate(t, factor)) for t in steps]


def test_warmup_ramps_linearly_to_the_rate_then_holds():
  schedule = _schedule("constant", warmup_epochs=2)  # 20 steps
  rates = _rates(schedule, [1, 10, 20, 21, 50])
  assert rates == pytest.approx([BASE / 20, BASE / 2, BASE, BASE, BASE])


def test_cosine_starts_at_the_rate_and_ends_at_the_final_fraction():
  schedule = _schedule("cosine", final_fraction=0.1, warmup_epochs=1)  # 10 of 50 steps
  rates = _rates(schedule, [5, 10, 30, 50, 80])
  middle = BASE * (0.1 + 0.9 * 0.5)  # halfway through the 40 steps after warmup
  assert rates == pytest.approx([BASE / 2, BASE, middle, 0.1 * BASE, 0.1 * BASE])
  quarter = float(_schedule("cosine").rate(13))  # no warmup: 13 of 50 steps
  assert quarter == pytest.approx(BASE * 0.5 * (1 + math.cos(math.pi * 13 / 50)))


def test_step_drops_by_the_factor_every_interval():
  schedule = _schedule("step", step_epochs=2, step_factor=0.5)
  # Steps 1-20 are epochs 1-2, 21-40 epochs 3-4, 41+ epoch 5 on.
  rates = _rates(schedule, [1, 20, 21, 40, 41])
  assert rates == pytest.approx([BASE, BASE, BASE / 2, BASE / 2, BASE / 4])


def test_plateau_reduces_after_patience_epochs_without_a_new_low():
  config = config_lib.Config(data_dir="d", model_dir="m", lr_schedule="plateau",
                             lr_plateau_patience=2, lr_plateau_factor=0.5)
  state = checkpoints_lib.LoopState(plateau=True)
  factors = []
  for val_loss in (1.0, 0.9, 0.95, 0.93, 0.92, 0.8, 0.85, 0.85):
    state.reduce_on_plateau(state.end_epoch(val_loss), config)
    factors.append(float(state.lr_factor))
  assert factors == [1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.25]
  rate = schedules.LearningRate(_schedule("plateau"), state.lr_factor)
  assert float(rate(0)) == pytest.approx(BASE / 4)  # the optimizer's rate follows the factor


def test_the_optimizer_steps_by_the_schedules_rate():
  # SGD moves a variable by rate x gradient: with a gradient of 1, each step's move is the
  # rate the schedule gives that step (warmup over 4 steps: 1/4, 2/4, 3/4, 1 of the rate).
  config = config_lib.Config(data_dir="d", model_dir="m", learning_rate=BASE, epochs=5,
                             warmup_epochs=2)
  optimizer = keras.optimizers.SGD(learning_rate=schedules.for_optimizer(config, 2))
  variable = keras.Variable(0.0)
  moves = []
  for _ in range(5):
    before = float(variable.numpy())
    optimizer.apply([tf.constant(1.0)], [variable])
    moves.append(before - float(variable.numpy()))
  assert moves == pytest.approx([BASE / 4, BASE / 2, 3 * BASE / 4, BASE, BASE], rel=1e-4)
  assert schedules.for_optimizer(config_lib.Config(data_dir="d", model_dir="m"), 2) == 1e-4


@pytest.mark.parametrize("settings, message", [
    ({"lr_schedule": "linear"}, "--lr_schedule=linear: choose one of constant, cosine, "),
    ({"warmup_epochs": -1.0}, "--warmup_epochs=-1.0: must be >= 0"),
    ({"lr_final_fraction": 1.5}, "--lr_final_fraction=1.5: must be in [0, 1]"),
    ({"lr_step_factor": 0.0}, "--lr_step_factor=0.0: must be in (0, 1]"),
    ({"lr_step_epochs": 0}, "--lr_step_epochs=0: must be at least 1"),
    ({"lr_plateau_factor": 2.0}, "--lr_plateau_factor=2.0: must be in (0, 1]"),
    ({"lr_schedule": "plateau", "lr_plateau_patience": 25},
     "--lr_plateau_patience=25 must be below --patience=25"),
    ({"lr_schedule": "cosine", "epochs": 5, "head_epochs": 2, "warmup_epochs": 3.0},
     "--warmup_epochs=3: --lr_schedule=cosine needs epochs after the warmup, but the main "
     "stage has 3"),
    ({"summary_steps": -1}, "--summary_steps=-1: must be >= 0"),
])
def test_bad_schedule_settings_name_the_flag(settings, message):
  config = config_lib.Config(**{"data_dir": "d", "model_dir": "m", **settings})
  with pytest.raises(config_lib.ConfigError) as error:
    config_lib.validate(config, model_names=models.MODELS)
  assert str(error.value).startswith(message)
  assert "\n" not in str(error.value)


# --- real runs -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def strategy():
  return strategy_lib.make_strategy("one_device")


def _config(data_dir, model_dir, **overrides):
  settings = dict(data_dir=data_dir, model_dir=str(model_dir), batch_size=16,
                  steps_per_epoch=2, learning_rate=BASE, verify_data=False)
  settings.update(overrides)
  return config_lib.Config(**settings)


@pytest.fixture(scope="module")
def cosine_run(data_dir, strategy, tmp_path_factory):
  """3 epochs of 2 steps: warmup over epoch 1, cosine to 0.1 of the rate by step 6; a
  summary every step."""
  model_dir = tmp_path_factory.mktemp("cosine") / "run"
  config = _config(data_dir, model_dir, epochs=3, lr_schedule="cosine", warmup_epochs=1,
                   lr_final_fraction=0.1, summary_steps=1, summary_images=4)
  results = train_lib.train_and_evaluate(config, strategy)
  return model_dir, results


def test_history_has_each_epochs_rate_of_the_cosine(cosine_run):
  model_dir, _ = cosine_run
  rates = [row["learning_rate"] for row in workdir.read_history(str(model_dir))]
  # Each epoch's last step: step 2 ends the warmup at the rate, step 4 is half way down the
  # cosine, step 6 its end.
  assert rates == pytest.approx([BASE, BASE * (0.1 + 0.9 * 0.5), 0.1 * BASE], rel=1e-5)


def _events(model_dir, run):
  """TensorBoard's own reading of tensorboard/<run>: {tag: {step: array}}."""
  accumulator = event_accumulator.EventAccumulator(
      str(model_dir / "tensorboard" / run), size_guidance={event_accumulator.TENSORS: 0})
  accumulator.Reload()
  return {tag: {e.step: tf.make_ndarray(e.tensor_proto) for e in accumulator.Tensors(tag)}
          for tag in accumulator.Tags()["tensors"]}


def test_tensorboard_shows_step_and_epoch_scalars_images_and_test_results(cosine_run):
  model_dir, results = cosine_run
  history = workdir.read_history(str(model_dir))
  train = _events(model_dir, "train")
  for tag in ("steps/loss", "steps/accuracy", "steps/learning_rate", "steps/examples_per_s"):
    assert sorted(train[tag]) == [1, 2, 3, 4, 5, 6], tag
  assert float(train["steps/learning_rate"][1]) == pytest.approx(BASE / 2, rel=1e-5)  # warmup
  assert float(train["steps/learning_rate"][6]) == pytest.approx(0.1 * BASE, rel=1e-5)
  assert all(0 < float(v) < 5 for v in train["steps/loss"].values())
  assert all(0 <= float(v) <= 1 for v in train["steps/accuracy"].values())
  assert all(float(v) > 0 for v in train["steps/examples_per_s"].values())
  # An epoch's loss is the mean of its two steps' (2 x 16 examples each).
  assert float(train["loss"][2]) == pytest.approx(
      (float(train["steps/loss"][3]) + float(train["steps/loss"][4])) / 2, rel=1e-5)
  assert float(train["learning_rate"][3]) == pytest.approx(history[2]["learning_rate"])
  # The images: [width, height, PNG...] strings, 4 of them, decodable at the data's size.
  [images] = train["images/augmented"].values()
  assert list(images[:2]) == [b"32", b"32"] and len(images) == 2 + 4
  assert tf.io.decode_png(images[2]).shape == (32, 32, 3)
  test = _events(model_dir, "test")
  assert sorted(test["accuracy"]) == sorted({0, results["best_epoch"], 3})
  assert [float(v) for v in test["accuracy"].values()] == pytest.approx(
      [results["test_accuracy"]] * len(test["accuracy"]))
  [table] = test["results"].values()
  assert f"{results['test_accuracy']:.4f}" in table.item().decode()


def test_a_resumed_plateau_run_keeps_its_reduced_rate(data_dir, strategy, tmp_path):
  # A rate too small to move float32 weights: the validation loss repeats exactly, so with
  # patience 2 epoch 3 reduces the rate, and the rerun's epoch 4 runs at a tenth of it.
  model_dir = tmp_path / "run"
  settings = dict(learning_rate=1e-10, lr_schedule="plateau", lr_plateau_patience=2,
                  patience=10, augment=False, summary_images=0)
  train_lib.train_and_evaluate(_config(data_dir, model_dir, epochs=3, **settings), strategy)
  reader = tf.train.load_checkpoint(str(model_dir / "checkpoints"))
  assert reader.get_tensor("lr_factor/.ATTRIBUTES/VARIABLE_VALUE") == pytest.approx(0.1)
  results = train_lib.train_and_evaluate(_config(data_dir, model_dir, epochs=4, **settings),
                                         strategy)
  assert results["resumed_from_epoch"] == 3
  history = workdir.read_history(str(model_dir))
  assert len({row["val_loss"] for row in history}) == 1
  assert [row["learning_rate"] for row in history] == pytest.approx(
      [1e-10, 1e-10, 1e-10, 1e-11])
