"""Transfer-learning models (Keras applications with a new head): build, train a step,
weights files, frozen layers, --init_from, the two-stage schedule and class subsets.

Every application is built at its smallest input (32x32) with weights=none: ImageNet
weights cannot be downloaded on the test machines, so weight files are made here by saving
a base network and loading it back.
"""

import csv
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline import dataset_info
from trainer import config as config_lib
from trainer import train
from trainer import models
from trainer import strategy as strategy_lib

RNG = np.random.default_rng(0)


def _pixels(n, size=32):
  return RNG.integers(0, 256, size=(n, size, size, 3)).astype("float32")


def _train_step(model, images, labels, learning_rate=1e-3):
  optimizer = keras.optimizers.SGD(learning_rate)
  with tf.GradientTape() as tape:
    loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
        labels, model(images, training=True)))
  grads = tape.gradient(loss, model.trainable_variables)
  optimizer.apply(grads, model.trainable_variables)
  return float(loss)


@pytest.mark.parametrize("name", sorted(models.APPLICATIONS))
def test_every_application_builds_and_trains_a_step_on_tiny_inputs(name):
  model = models.build(name, 3, (32, 32, 3))
  assert model.output_shape == (None, 3)
  assert model.get_layer("base").output_shape[-1] == model.get_layer("predictions").kernel.shape[0]
  before = [w.numpy().copy() for w in model.trainable_variables]
  loss = _train_step(model, _pixels(4), np.array([0, 2, 1, 0]))
  assert np.isfinite(loss)
  after = [w.numpy() for w in model.trainable_variables]
  assert any(not np.array_equal(b, a) for b, a in zip(before, after))
  probs = np.asarray(model(_pixels(2), training=False))
  np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_the_family_preprocessing_is_inside_the_model():
  raw = _pixels(2)
  vgg = models.build("VGG16", 3, (32, 32, 3))
  np.testing.assert_allclose(np.asarray(vgg.get_layer("preprocess")(raw)),
                             keras.applications.vgg16.preprocess_input(raw.copy()), atol=1e-4)
  mobilenet = models.build("MobileNetV2", 3, (32, 32, 3))
  scaled = np.asarray(mobilenet.get_layer("preprocess")(raw))
  np.testing.assert_allclose(scaled, raw / 127.5 - 1.0, atol=1e-5)


def test_an_application_saved_as_keras_loads_back():
  model = models.build("MobileNetV2", 3, (32, 32, 3))
  path = os.path.join(os.environ.get("TEST_TMPDIR", "/tmp"), "mobilenet_roundtrip.keras")
  model.save(path)
  loaded = keras.models.load_model(path, compile=False)
  raw = _pixels(2)
  np.testing.assert_allclose(np.asarray(loaded(raw)), np.asarray(model(raw)), atol=1e-5)


def test_a_weights_file_round_trips_through_weights_path(tmp_path):
  source = models.build("ResNet50V2", 4, (32, 32, 3))
  path = str(tmp_path / "resnet50v2_notop.weights.h5")
  source.get_layer("base").save_weights(path)
  model = models.build("ResNet50V2", 7, (32, 32, 3), weights=path)
  for a, b in zip(source.get_layer("base").weights, model.get_layer("base").weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  # The head is new: it is sized for this model's 7 classes.
  assert model.get_layer("predictions").kernel.shape == (2048, 7)


def test_mismatched_or_missing_weight_files_are_named(tmp_path):
  vgg = str(tmp_path / "vgg16_notop.weights.h5")
  models.build("VGG16", 3, (32, 32, 3)).get_layer("base").save_weights(vgg)
  with pytest.raises(models.ModelError, match=r"--weights=.*vgg16_notop.weights.h5: does not "
                                              r"fit ResNet50's base network"):
    models.build("ResNet50", 3, (32, 32, 3), weights=vgg)
  garbage = tmp_path / "garbage.weights.h5"
  garbage.write_bytes(b"not an hdf5 file")
  with pytest.raises(models.ModelError, match="garbage.weights.h5: does not fit VGG16"):
    models.build("VGG16", 3, (32, 32, 3), weights=str(garbage))
  with pytest.raises(models.ModelError, match="missing.h5: no such file"):
    models.build("VGG16", 3, (32, 32, 3), weights=str(tmp_path / "missing.h5"))
  with pytest.raises(models.ModelError, match="only the Keras applications"):
    models.build("simple", 3, (32, 32, 3), weights=vgg)
  with pytest.raises(models.ModelError, match="at least 32x32.*--image_size"):
    models.build("VGG16", 3, (16, 16, 3))


def test_frozen_layers_do_not_train_and_frozen_batchnorm_keeps_its_statistics():
  model = models.build("ResNet50", 3, (32, 32, 3))
  base = models.base_layers(model)
  assert models.set_trainable(model, 0) == 0
  head_only = {id(v) for v in model.trainable_variables}
  assert head_only == {id(v) for v in model.get_layer("predictions").trainable_variables}
  assert models.set_trainable(model, 5) == 5
  assert all(layer.trainable for layer in base[-5:])
  assert not any(layer.trainable for layer in base[:-5])
  frozen_bn = next(l for l in base[:-5] if isinstance(l, keras.layers.BatchNormalization))
  open_bn = next(l for l in base[-5:] if isinstance(l, keras.layers.BatchNormalization))
  frozen_before = frozen_bn.moving_mean.numpy().copy()
  open_before = open_bn.moving_mean.numpy().copy()
  kernel_before = base[0].weights[0].numpy().copy() if base[0].weights else None
  _train_step(model, _pixels(4), np.array([0, 1, 2, 0]))
  np.testing.assert_array_equal(frozen_bn.moving_mean.numpy(), frozen_before)
  assert not np.array_equal(open_bn.moving_mean.numpy(), open_before)
  if kernel_before is not None:
    np.testing.assert_array_equal(base[0].weights[0].numpy(), kernel_before)
  with pytest.raises(models.ModelError, match="--trainable_layers=999.*only 175 layers"):
    models.set_trainable(model, 999)


def test_frozen_batchnorm_keeps_statistics_and_scale_while_the_layers_around_it_train():
  # `basic` (LeakyReLU): a randomly initialised application's ReLU6 under frozen, untrained
  # BatchNorm can saturate and pass no gradient, which would test nothing.
  model = models.build("basic", 3, (32, 32, 3))
  base = models.base_layers(model)
  batchnorms = [l for l in base if isinstance(l, keras.layers.BatchNormalization)]
  convs = [l for l in base if isinstance(l, keras.layers.Conv2D)]
  trained = models.set_trainable(model, None, freeze_batchnorm=True)
  assert trained == len(base) - len(batchnorms) and not any(l.trainable for l in batchnorms)
  before = [(l.moving_mean.numpy().copy(), l.gamma.numpy().copy()) for l in batchnorms]
  kernel = convs[-1].kernel.numpy().copy()
  _train_step(model, _pixels(4), np.array([0, 1, 2, 0]))
  for layer, (mean, gamma) in zip(batchnorms, before):
    np.testing.assert_array_equal(layer.moving_mean.numpy(), mean)
    np.testing.assert_array_equal(layer.gamma.numpy(), gamma)
  assert not np.array_equal(convs[-1].kernel.numpy(), kernel)
  # Without it they train (batch statistics in the step, moving ones updated).
  models.set_trainable(model, None)
  _train_step(model, _pixels(4), np.array([0, 1, 2, 0]))
  assert not np.array_equal(batchnorms[-1].moving_mean.numpy(), before[-1][0])


@pytest.mark.parametrize("batchnorm, weights, frozen", [
    ("auto", "none", False), ("auto", "imagenet", True), ("auto", "/m/base.weights.h5", True),
    ("train", "imagenet", False), ("frozen", "none", True)])
def test_batchnorm_auto_freezes_under_pretrained_weights_only(batchnorm, weights, frozen):
  config = config_lib.Config(data_dir="d", model_dir="m", batchnorm=batchnorm, weights=weights)
  assert config_lib.freeze_batchnorm(config) is frozen
  with pytest.raises(config_lib.ConfigError, match="--batchnorm=off: choose one of auto"):
    config_lib.validate(config_lib.Config(data_dir="d", model_dir="m", batchnorm="off"))


@pytest.mark.parametrize("value, parsed", [("all", None), ("none", 0), ("12", 12)])
def test_trainable_layers_values(value, parsed):
  config = config_lib.Config(data_dir="d", model_dir="m", trainable_layers=value)
  assert config_lib.trainable_layers(config) == parsed


@pytest.mark.parametrize("value", ["0", "-3", "last", ""])
def test_bad_trainable_layers_name_the_flag(value):
  config = config_lib.Config(data_dir="d", model_dir="m", trainable_layers=value)
  with pytest.raises(config_lib.ConfigError, match="--trainable_layers"):
    config_lib.validate(config)


def test_class_subsets_are_seeded_nested_or_named():
  names = tuple(f"c{i}" for i in range(10))
  pick = lambda value, seed=0: config_lib.class_subset(  # pylint: disable=g-long-lambda
      config_lib.Config(data_dir="d", model_dir="m", classes=value, seed=seed), names)
  assert pick("") is None
  two, five = pick("2"), pick("5")
  assert len(two) == 2 and len(five) == 5 and set(two) <= set(five)
  assert pick("5") == five and pick("5", seed=1) != five
  assert pick("c3,c1") == (3, 1)  # the order given is the new label order
  for bad, message in [("11", "only 10 classes"), ("c1,zebra", "unknown class.*zebra"),
                       ("c1,c1", "named twice"), ("c1", "at least 2")]:
    with pytest.raises(config_lib.ConfigError, match=message):
      pick(bad)


# --- through the training loop, on tiny real data ------------------------------------------


@pytest.fixture(scope="module")
def data_dir(make_data_dir):
  return make_data_dir(classes=("airplane", "automobile", "bird", "cat"), per_class=12)


@pytest.fixture(scope="module")
def strategy():
  return strategy_lib.make_strategy("one_device")


def _run(data_dir, model_dir, strategy, **overrides):
  settings = dict(data_dir=data_dir, model_dir=str(model_dir), batch_size=8, epochs=2,
                  steps_per_epoch=2, learning_rate=1e-3, verify_data=False)
  settings.update(overrides)
  return train.train_and_evaluate(config_lib.Config(**settings), strategy)


def _per_class(data_dir, split):
  info = dataset_info.load(data_dir)
  return dict(zip(info.class_names, info.split(split).per_class))


def _confusion(model_dir):
  with open(os.path.join(model_dir, "confusion_matrix.csv")) as f:
    rows = list(csv.reader(f))
  return rows[0][1:], [r[0] for r in rows[1:]], np.array([r[1:] for r in rows[1:]], int)


def test_a_class_subset_trains_and_tests_on_those_classes_only(data_dir, strategy, tmp_path):
  results = _run(data_dir, tmp_path / "run", strategy, classes="cat,airplane")
  assert results["class_names"] == ["cat", "airplane"]
  # The test pass saw exactly the two classes' test images, nothing of the others.
  counts = _per_class(data_dir, "test")
  assert results["test_examples"] == counts["cat"] + counts["airplane"]
  predicted, true, matrix = _confusion(str(tmp_path / "run"))
  assert predicted == true == ["cat", "airplane"]
  assert matrix.sum(axis=1).tolist() == [counts["cat"], counts["airplane"]]
  assert np.trace(matrix) / matrix.sum() == pytest.approx(results["test_accuracy"])


def test_init_from_copies_all_but_the_head_and_names_mismatches(data_dir, strategy, tmp_path):
  _run(data_dir, tmp_path / "pretrain", strategy, model="basic", classes="airplane,automobile")
  source = keras.models.load_model(str(tmp_path / "pretrain" / "model.keras"), compile=False)
  # Fine-tune on the two other classes with the base frozen (its BatchNorm statistics
  # too): the copied layers must still equal the source's, the new head must not.
  _run(data_dir, tmp_path / "finetune", strategy, model="basic", classes="bird,cat",
       init_from=str(tmp_path / "pretrain"), trainable_layers="none", epochs=1)
  tuned = keras.models.load_model(str(tmp_path / "finetune" / "model.keras"), compile=False)
  src = [l for l in source.layers if l.weights]
  dst = [l for l in tuned.layers if l.weights]
  for s, d in zip(src[:-1], dst[:-1]):
    for a, b in zip(s.get_weights(), d.get_weights()):
      np.testing.assert_array_equal(a, b)
  assert not np.array_equal(src[-1].get_weights()[0], dst[-1].get_weights()[0])
  with pytest.raises(config_lib.ConfigError, match="--init_from=.*simple model"):
    _run(data_dir, tmp_path / "wrong", strategy, model="basic",
         init_from=str(_simple_run(data_dir, tmp_path, strategy)))
  with pytest.raises(config_lib.ConfigError, match="--init_from=.*model.keras not found"):
    _run(data_dir, tmp_path / "none", strategy, init_from=str(tmp_path / "nowhere"))


def _simple_run(data_dir, tmp_path, strategy):
  _run(data_dir, tmp_path / "simple", strategy, epochs=1, steps_per_epoch=1)
  return tmp_path / "simple"


def test_two_stages_train_the_head_first_then_the_base(data_dir, strategy, tmp_path):
  # Start from a weights file (--weights=<path>), as an offline machine would.
  source = models.build("MobileNetV2", 4, (32, 32, 3))
  weights = str(tmp_path / "mobilenetv2_notop.weights.h5")
  source.get_layer("base").save_weights(weights)
  model_dir = tmp_path / "staged"
  results = _run(data_dir, model_dir, strategy, model="MobileNetV2", head_epochs=1, epochs=2,
                 trainable_layers="4", steps_per_epoch=1, weights=weights)
  assert results["epochs_run"] == 2
  # After stage 2 the last 4 base layers and the head train.
  # A weights file is pretrained: --batchnorm=auto keeps the base's BatchNorm frozen.
  model = models.build("MobileNetV2", 4, (32, 32, 3))
  models.set_trainable(model, 4, freeze_batchnorm=True)
  assert results["trainable_parameters"] == train.count_parameters(model.trainable_variables)
  # The layers that never trained still hold the file's weights in the exported model.
  exported = keras.models.load_model(str(model_dir / "model.keras"), compile=False)
  frozen = models.base_layers(exported)[:-4]
  originals = {l.name: l for l in models.base_layers(source)}
  checked = 0
  for layer in frozen:
    for a, b in zip(layer.get_weights(), originals[layer.name].get_weights()):
      np.testing.assert_array_equal(a, b)
      checked += 1
  assert checked > 100
  flags_text = (model_dir / "flags.txt").read_text()
  assert "--head_epochs=1" in flags_text and "--trainable_layers=4" in flags_text
  # The checkpoint holds both stages' optimizers (their iteration counts: one step each), so
  # a rerun with more epochs resumes either stage (resuming itself: train_test, main_test).
  checkpoint = tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
  reader = tf.train.load_checkpoint(checkpoint)
  iterations = {name.split("/")[0]: int(reader.get_tensor(name))
                for name, _ in tf.train.list_variables(checkpoint)
                if name.split("/")[0] in ("optimizer", "head_optimizer")
                and name.endswith("iterations/.ATTRIBUTES/VARIABLE_VALUE")}
  assert iterations == {"optimizer": 1, "head_optimizer": 1}, tf.train.list_variables(checkpoint)


def test_device_augmentation_trains_and_records_the_choice(data_dir, strategy, tmp_path):
  results = _run(data_dir, tmp_path / "device", strategy, augment_on="device")
  assert np.isfinite(results["test_loss"])
  assert "--augment_on=device" in (tmp_path / "device" / "flags.txt").read_text()
  info = json.loads((tmp_path / "device" / "results.json").read_text())
  assert info["epochs_run"] == 2
