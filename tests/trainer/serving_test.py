"""The exported SavedModel on its own: `saved_model_cli run` (which ships with TensorFlow) on
real image bytes answers with the training data's class names; its signatures agree with
model.keras on the same pixels."""

import os
import subprocess
import sys

import keras
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from tests import processes
from tests.trainer import trained_run
from trainer import input_pipeline
from trainer import serving
from trainer import workdir

CLASSES = ["airplane", "automobile", "bird"]  # the default test data's


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_dir):
  return trained_run.model_dir(tmp_path_factory, data_dir)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
  return trained_run.write_images(tmp_path_factory.mktemp("images"))


def _saved_model_cli():
  cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
  if not os.path.exists(cli):
    pytest.skip(f"no saved_model_cli beside {sys.executable}")
  return cli


def test_saved_model_cli_run_on_image_bytes_returns_class_names(run_dir, images, tmp_path):
  paths = [images[n] for n in ("jpeg_32", "jpeg_upscaled", "png_gray", "png_rgba")]
  inputs = tmp_path / "image_bytes.npy"
  np.save(inputs, np.array([open(p, "rb").read() for p in paths], dtype=object))
  saved_model = workdir.saved_model_dir(run_dir)
  result = subprocess.run(
      [_saved_model_cli(), "run", f"--dir={saved_model}", "--tag_set=serve",
       "--signature_def=serving_default", f"--inputs=image_bytes={inputs}",
       f"--outdir={tmp_path / 'out'}"],
      capture_output=True, text=True, timeout=240, env=processes.command_env())
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Result for output key class_name:" in result.stdout
  names = np.load(tmp_path / "out" / "class_name.npy", allow_pickle=True)
  class_ids = np.load(tmp_path / "out" / "class_id.npy")
  probabilities = np.load(tmp_path / "out" / "probabilities.npy")
  assert probabilities.shape == (4, 3)
  np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
  assert [n.decode() for n in names] == [CLASSES[i] for i in probabilities.argmax(axis=1)]
  assert class_ids.tolist() == probabilities.argmax(axis=1).tolist()

  # The same as model.keras on the pixels TensorFlow decodes (as the trainer decodes stored
  # images), resized as the trainer resizes.
  model = keras.models.load_model(workdir.join(run_dir, workdir.KERAS_MODEL))
  decoded = [input_pipeline.decode_image(open(p, "rb").read()) for p in paths]
  pixels = np.stack([input_pipeline.resize_pixels(d, (32, 32)) if d.shape[0] != 32 else d
                     for d in decoded]).astype(np.float32)
  np.testing.assert_allclose(probabilities, model.predict(pixels, verbose=0), rtol=1e-5,
                             atol=1e-6)


def test_the_saved_model_alone_names_the_class_of_a_jpeg_in_three_lines(run_dir, images):
  # What README's snippet does, with nothing of the repository.
  model = tf.saved_model.load(workdir.saved_model_dir(run_dir))
  answer = model.signatures["serving_default"](
      image_bytes=tf.constant([open(images["jpeg_upscaled"], "rb").read()]))
  assert answer["class_name"].numpy()[0].decode() in CLASSES

  metadata = model.signatures["metadata"]()
  assert [n.decode() for n in metadata["class_names"].numpy()] == CLASSES
  assert metadata["image_size"].numpy().tolist() == [32, 32]


def test_pixel_signatures_take_uint8_or_float_0_255_at_any_size(run_dir, images):
  served = serving.load(workdir.saved_model_dir(run_dir))
  assert served.class_names == tuple(CLASSES) and served.image_size == (32, 32)
  rgba = np.asarray(Image.open(images["png_rgba"]).convert("RGB"))  # 40 x 64
  by_bytes = served.loaded.signatures["serving_default"](
      image_bytes=tf.constant([open(images["png_rgba"], "rb").read()]))
  as_uint8 = served.loaded.signatures["serving_pixels_uint8"](pixels=rgba[None])
  np.testing.assert_allclose(as_uint8["probabilities"], by_bytes["probabilities"],
                             rtol=1e-6, atol=1e-7)
  # Float pixels at the input size meet the network unchanged, as in model.keras.
  small = input_pipeline.resize_pixels(rgba, (32, 32)).numpy().astype(np.float32)[None]
  as_float = served.loaded.signatures["serving_pixels"](pixels=small)
  np.testing.assert_allclose(as_float["probabilities"], as_uint8["probabilities"],
                             rtol=1e-6, atol=1e-7)
  model = keras.models.load_model(workdir.join(run_dir, workdir.KERAS_MODEL))
  np.testing.assert_allclose(as_float["probabilities"], model.predict(small, verbose=0),
                             rtol=1e-5, atol=1e-6)
  assert as_float["class_name"].numpy()[0].decode() == CLASSES[
      int(as_float["class_id"].numpy()[0])]
  # Another size in float: resized, not refused.
  assert served.loaded.signatures["serving_pixels"](
      pixels=tf.zeros([2, 50, 70, 3]))["probabilities"].shape == (2, 3)


def test_export_refuses_class_names_that_do_not_fit_the_model(tmp_path):
  from trainer import models  # pylint: disable=g-import-not-at-top
  with pytest.raises(serving.ServingError, match="2 class names for a model with 3 outputs"):
    serving.export(models.build("simple", 3, (32, 32, 3)), str(tmp_path / "sm"), ["a", "b"])
