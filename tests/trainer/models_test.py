"""The report's two baselines, layer by layer, and the contract every model keeps."""

import keras
import numpy as np
import pytest

from trainer import models


def _describe(layer):
  """A layer as (kind, its defining settings), so a sequence can be compared as data."""
  kind = type(layer).__name__
  if kind == "Conv2D":
    return (kind, layer.filters, tuple(layer.kernel_size), layer.activation.__name__,
            layer.padding)
  if kind == "Dense":
    return (kind, layer.units, layer.activation.__name__)
  if kind == "MaxPooling2D":
    return (kind, tuple(layer.pool_size))
  if kind == "Dropout":
    return (kind, layer.rate)
  if kind == "LeakyReLU":
    return (kind, pytest.approx(layer.negative_slope))
  if kind == "Rescaling":
    return (kind, pytest.approx(layer.scale))
  return (kind,)


def test_simple_is_the_reports_layer_sequence():
  model = models.build("simple", 100, (32, 32, 3))
  assert [_describe(l) for l in model.layers] == [
      ("Rescaling", pytest.approx(1 / 255)),
      ("Conv2D", 32, (3, 3), "relu", "valid"),
      ("MaxPooling2D", (2, 2)),
      ("Conv2D", 64, (3, 3), "relu", "valid"),
      ("MaxPooling2D", (2, 2)),
      ("Conv2D", 64, (3, 3), "relu", "valid"),
      ("Flatten",),
      ("Dense", 64, "relu"),
      ("Dense", 100, "softmax"),
  ]


def test_basic_is_the_reports_layer_sequence():
  model = models.build("basic", 100, (32, 32, 3))

  def block(filters, kernel, rate):  # The report's repeated block.
    return [
      ("Conv2D", filters, kernel, "relu", "valid"),
      ("BatchNormalization",),
      ("LeakyReLU", pytest.approx(0.3)),
      ("MaxPooling2D", (2, 2)),
      ("Dropout", rate),
    ]

  assert [_describe(l) for l in model.layers] == [
      ("Rescaling", pytest.approx(1 / 255)),
      ("Conv2D", 32, (2, 2), "relu", "valid"),
      *block(64, (2, 2), 0.2),
      *block(128, (2, 2), 0.2),
      *block(256, (3, 3), 0.3),
      ("Flatten",),
      ("Dense", 1024, "linear"),
      ("LeakyReLU", pytest.approx(0.3)),
      ("Dropout", 0.5),
      ("Dense", 100, "softmax"),
  ]


def test_parameter_counts_match_a_hand_count():
  # Conv: k*k*in*out + out; Dense: in*out + out; BN: 4 per channel (2 trainable).
  # simple at 32x32: 30 -> pool 15 -> 13 -> pool 6 -> 4, so Flatten gives 4*4*64.
  simple = (3*3*3*32 + 32) + (3*3*32*64 + 64) + (3*3*64*64 + 64) \
      + (4*4*64*64 + 64) + (64*100 + 100)
  # basic at 32x32: 31 -> 30 -> pool 15 -> 14 -> pool 7 -> 5 -> pool 2, Flatten 2*2*256.
  basic = (2*2*3*32 + 32) + (2*2*32*64 + 64) + 4*64 + (2*2*64*128 + 128) + 4*128 \
      + (3*3*128*256 + 256) + 4*256 + (2*2*256*1024 + 1024) + (1024*100 + 100)
  assert models.build("simple", 100, (32, 32, 3)).count_params() == simple == 128_420
  assert models.build("basic", 100, (32, 32, 3)).count_params() == basic == 1_490_628


def test_models_follow_the_input_shape_and_class_count():
  model = models.build("simple", 7, (48, 40, 3))
  assert model.input_shape == (None, 48, 40, 3)
  assert model.output_shape == (None, 7)


@pytest.mark.parametrize("name", ["simple", "basic"])
def test_model_takes_raw_pixels_and_outputs_probabilities(name):
  model = models.build(name, 5, (32, 32, 3))
  raw = np.random.default_rng(0).integers(0, 256, size=(4, 32, 32, 3)).astype("float32")
  probs = np.asarray(model(raw, training=False))
  assert probs.shape == (4, 5)
  np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
  # The model rescales by itself: its first layer maps 255 to 1.
  np.testing.assert_allclose(np.asarray(model.layers[0](raw)), raw / 255, rtol=1e-6)


def test_mixed_precision_keeps_a_float32_softmax_and_restores_the_global_policy():
  model = models.build("basic", 3, (32, 32, 3), dtype_policy="mixed_bfloat16")
  assert model.layers[1].compute_dtype == "bfloat16"
  assert model.layers[-1].compute_dtype == "float32"
  out = model(np.zeros((2, 32, 32, 3), "float32"), training=False)
  assert out.dtype == "float32"
  assert keras.config.dtype_policy().name == "float32"


def test_unknown_model_names_the_known_ones():
  with pytest.raises(models.UnknownModelError, match="'resnet'.*basic, simple"):
    models.build("resnet", 10, (32, 32, 3))
