"""The exported SavedModel (`<model_dir>/saved_model/`): its signatures, written by `export`
and read back by `load`.

Signatures, as TF Serving, `saved_model_cli run` and `tf.saved_model.load` see them:

  serving_default       image_bytes: string [N], encoded images (JPEG, PNG, GIF's first
                        frame, BMP, WebP), any size, grayscale/RGB/RGBA
  serving_pixels        pixels: float32 [N, H, W, 3], 0-255 (NOT divided by 255), any H, W
  serving_pixels_uint8  pixels: uint8 [N, H, W, 3], any H, W

each answering

  class_name     string [N]      the most probable class
  class_id       int64 [N]       its index in the class list
  probabilities  float32 [N, C]  one column per class, in the class list's order

and `metadata` (no inputs) -> class_names string [C], image_size int32 [2] (the model's input
height and width). The class names are constants in the graph, so the directory alone answers
with names. `serve` (float32 [N, H, W, 3] at the input size -> probabilities) is what
`keras.Model.export` wrote before, kept for callers of it.

Images are decoded and resized by the trainer's own functions (input_pipeline.decode_image,
input_pipeline.resize_pixels), so an 8-bit RGB JPEG or PNG reaches the network exactly as a
training image stored from the same file did. Unlike the Beam job (PIL), the graph cannot
apply EXIF orientation and converts other modes (16-bit, CMYK JPEG) with TensorFlow's
decoders: `python -m trainer.predict` decodes through the Beam job's code for those.
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from trainer import input_pipeline

SERVING_DEFAULT = "serving_default"
SERVING_PIXELS = "serving_pixels"
SERVING_PIXELS_UINT8 = "serving_pixels_uint8"
METADATA = "metadata"
LEGACY_SERVE = "serve"
IMAGE_BYTES = "image_bytes"
PIXELS = "pixels"
OUTPUTS = ("class_name", "class_id", "probabilities")


class ServingError(ValueError):
  """A SavedModel cannot be exported or loaded as asked; the message names the path."""


class OldSavedModelError(ServingError):
  """A SavedModel written before these signatures (keras.Model.export's `serve` only)."""


def export(model, path, class_names):
  """Writes `model` (a keras.Model taking raw 0-255 pixels at its input size) to `path` as a
  SavedModel with the signatures above."""
  class_names = [str(n) for n in class_names]
  num_classes = int(model.output_shape[-1])
  if len(class_names) != num_classes:
    raise ServingError(f"{path}: {len(class_names)} class names for a model with "
                       f"{num_classes} outputs")
  height, width, channels = (int(d) for d in model.input_shape[1:4])
  if channels != 3:
    raise ServingError(f"{path}: the model takes {channels} channels; serving decodes RGB")
  size = (height, width)
  names = tf.constant(class_names)

  # One traced call of the network, which every signature calls: tracing a large network
  # (ResNet50, DenseNet121) once per signature would multiply the export's time.
  @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32)])
  def answer(pixels):
    """float32 [N, height, width, 3] -> the outputs."""
    probabilities = tf.cast(model(pixels, training=False), tf.float32)
    class_id = tf.argmax(probabilities, axis=-1)
    return {"class_name": tf.gather(names, class_id), "class_id": class_id,
            "probabilities": probabilities}

  def to_input_size(pixels):
    # As the trainer's input pipeline: no resampling when the size is already right (so
    # pixels at the input size reach the network untouched), else antialiased bilinear.
    same = tf.reduce_all(tf.equal(tf.shape(pixels)[1:3], size))
    if pixels.dtype == tf.uint8:
      resized = tf.cond(same, lambda: pixels,
                        lambda: input_pipeline.resize_pixels(pixels, size))
    else:
      # Float pixels are not rounded: a client's float values are kept as they are.
      resized = tf.cond(same, lambda: pixels,
                        lambda: tf.image.resize(pixels, size, antialias=True))
    return tf.cast(tf.ensure_shape(resized, [None, height, width, 3]), tf.float32)

  def from_image_bytes(image_bytes):
    def decode(encoded):
      image = input_pipeline.decode_image(encoded)
      same = tf.reduce_all(tf.equal(tf.shape(image)[:2], size))
      image = tf.cond(same, lambda: image, lambda: input_pipeline.resize_pixels(image, size))
      return tf.ensure_shape(image, [height, width, 3])
    # One image at a time: they differ in size until resized.
    pixels = tf.map_fn(decode, image_bytes,
                       fn_output_signature=tf.TensorSpec([height, width, 3], tf.uint8))
    return answer(tf.cast(pixels, tf.float32))

  def metadata():
    return {"class_names": names, "image_size": tf.constant(size, tf.int32)}

  archive = keras.export.ExportArchive()
  archive.track(model)
  # The first endpoint added is also the SavedModel's serving_default.
  archive.add_endpoint(SERVING_DEFAULT, from_image_bytes,
                       input_signature=[tf.TensorSpec([None], tf.string, name=IMAGE_BYTES)])
  archive.add_endpoint(SERVING_PIXELS, lambda pixels: answer(to_input_size(pixels)),
                       input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32,
                                                      name=PIXELS)])
  archive.add_endpoint(SERVING_PIXELS_UINT8, lambda pixels: answer(to_input_size(pixels)),
                       input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8,
                                                      name=PIXELS)])
  archive.add_endpoint(METADATA, metadata, input_signature=[])
  archive.add_endpoint(LEGACY_SERVE, lambda x: answer(x)["probabilities"],
                       input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32)])
  archive.write_out(path, verbose=False)


@dataclasses.dataclass
class Served:
  """A loaded SavedModel: its class names, its input size, and `probabilities(pixels)`."""
  path: str
  class_names: tuple
  image_size: tuple  # (height, width)
  loaded: object  # keeps the restored variables alive while the signatures are used

  def probabilities(self, pixels):
    """uint8 pixels [N, H, W, 3] (any H, W) -> float32 probabilities [N, classes]."""
    fn = self.loaded.signatures[SERVING_PIXELS_UINT8]
    return fn(**{PIXELS: tf.convert_to_tensor(pixels, tf.uint8)})["probabilities"]


def load(path):
  """The SavedModel at `path` (a directory `export` wrote); ServingError naming the path
  when it is not one, or was exported before these signatures existed."""
  if not tf.io.gfile.exists(path.rstrip("/") + "/saved_model.pb"):
    raise ServingError(f"{path}: no saved_model.pb (expected the saved_model/ directory of "
                       "a finished run)")
  loaded = tf.saved_model.load(path)
  missing = [s for s in (METADATA, SERVING_PIXELS_UINT8) if s not in loaded.signatures]
  if missing:
    raise OldSavedModelError(
        f"{path}: has no {' or '.join(missing)} signature: it was exported before "
        "trainer/serving.py (workdir.load_saved_model exports a run's model.keras again)")
  meta = loaded.signatures[METADATA]()
  names = tuple(n.decode() for n in np.asarray(meta["class_names"]))
  height, width = (int(d) for d in np.asarray(meta["image_size"]))
  return Served(path=path, class_names=names, image_size=(height, width), loaded=loaded)
