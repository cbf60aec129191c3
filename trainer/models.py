"""Model builders by name: `build(name, num_classes, image_shape)` -> an uncompiled keras.Model.

Every model takes raw pixels (0..255, float) and rescales them itself, so that an exported
model needs no preprocessing beyond decoding (and resizing to its input size). The softmax
output is always float32: under a mixed precision policy a bfloat16/float16 softmax loses
enough precision to make the cross-entropy of confident predictions noisy.

`simple` and `basic` are the report's two baselines, layer for layer. The transfer-learning
models (VGG16 ... EfficientNetB0) are Keras applications without their ImageNet classifier:

    pixels -> ApplicationPreprocess (the family's own preprocess_input) -> base network
    (a nested keras.Model named "base", global average pooling) -> Dropout -> Dense softmax

with `weights` "none" (random), "imagenet" (downloaded by Keras) or a path to a weights file
of the base network (e.g. the `..._notop.h5` that Keras downloads, copied to an offline
machine, or torchvision's ImageNet weights converted by tools.import_weights, whose file
records that the model must normalise its input as torchvision does). `set_trainable` freezes all, none or all but the last N layers of the base.
"""

import contextlib
import copy
import os

import keras
from keras import layers

from trainer import config as config_lib


class ModelError(config_lib.ConfigError):
  """A model cannot be built as asked (bad weights file, input too small, ...)."""


def _simple(num_classes, image_shape):
  """The report's `simple` CNN (about 122k parameters at 32x32x3, 10 classes)."""
  return keras.Sequential([
      keras.Input(shape=image_shape),
      layers.Rescaling(1.0 / 255),
      layers.Conv2D(32, (3, 3), activation="relu"),
      layers.MaxPooling2D((2, 2)),
      layers.Conv2D(64, (3, 3), activation="relu"),
      layers.MaxPooling2D((2, 2)),
      layers.Conv2D(64, (3, 3), activation="relu"),
      layers.Flatten(),
      layers.Dense(64, activation="relu"),
      layers.Dense(num_classes, activation="softmax", dtype="float32"),
  ], name="simple")


def _basic_block(filters, kernel, dropout):
  """Conv(relu) -> BN -> LeakyReLU -> MaxPool -> Dropout, as the report stacks them.

  The relu before BN and the LeakyReLU after it are both the report's: kept as written so
  that the baseline is reproduced, not improved.
  """
  return [
      layers.Conv2D(filters, kernel, activation="relu"),
      layers.BatchNormalization(),
      layers.LeakyReLU(negative_slope=0.3),
      layers.MaxPooling2D((2, 2)),
      layers.Dropout(dropout),
  ]


def _basic(num_classes, image_shape):
  """The report's `basic` CNN (about 1.4M parameters at 32x32x3, 10 classes)."""
  return keras.Sequential([
      keras.Input(shape=image_shape),
      layers.Rescaling(1.0 / 255),
      layers.Conv2D(32, (2, 2), activation="relu"),
      *_basic_block(64, (2, 2), 0.2),
      *_basic_block(128, (2, 2), 0.2),
      *_basic_block(256, (3, 3), 0.3),
      layers.Flatten(),
      layers.Dense(1024),
      layers.LeakyReLU(negative_slope=0.3),
      layers.Dropout(0.5),
      layers.Dense(num_classes, activation="softmax", dtype="float32"),
  ], name="basic")


# Keras applications: name -> (constructor, preprocess_input of its family).
APPLICATIONS = {
    "VGG16": (keras.applications.VGG16, keras.applications.vgg16.preprocess_input),
    "VGG19": (keras.applications.VGG19, keras.applications.vgg19.preprocess_input),
    "ResNet50": (keras.applications.ResNet50, keras.applications.resnet50.preprocess_input),
    "ResNet50V2": (keras.applications.ResNet50V2,
                   keras.applications.resnet_v2.preprocess_input),
    "DenseNet121": (keras.applications.DenseNet121,
                    keras.applications.densenet.preprocess_input),
    "MobileNetV2": (keras.applications.MobileNetV2,
                    keras.applications.mobilenet_v2.preprocess_input),
    # EfficientNet rescales inside the network; its preprocess_input is the identity.
    "EfficientNetB0": (keras.applications.EfficientNetB0,
                       keras.applications.efficientnet.preprocess_input),
}
MIN_APPLICATION_SIZE = 32  # Keras applications refuse smaller inputs


# The input normalisation of torchvision's ImageNet weights, on 0..1 RGB pixels (torchvision
# trains every classifier with it, whatever the architecture).
TORCH_IMAGENET_MEAN = (0.485, 0.456, 0.406)
TORCH_IMAGENET_STD = (0.229, 0.224, 0.225)
# How an application's input is normalised: "keras" (the family's preprocess_input, which
# Keras' own ImageNet weights expect) or "torch" (TORCH_IMAGENET_MEAN/STD, for weights
# imported from torchvision by tools.import_weights).
NORMALIZATIONS = ("keras", "torch")
# The attribute of a weights .h5 file's root that names its normalisation (absent: "keras").
# Written by tools.import_weights through write_weights_normalization, read by build.
_NORMALIZATION_ATTR = "trainer_input_normalization"


@keras.saving.register_keras_serializable(package="trainer")
class ApplicationPreprocess(layers.Layer):
  """Raw 0..255 RGB pixels -> what Keras application `model_name` expects (its family's
  preprocess_input: BGR mean-subtracted for VGG/ResNet50, [-1, 1] for ResNet50V2 and
  MobileNetV2, ImageNet mean/std for DenseNet, unchanged for EfficientNet), or with
  normalization="torch" what torchvision's weights expect (0..1, then ImageNet mean/std).
  Part of the model, so the exported model takes the same raw pixels as `simple` and
  `basic`, and its export and predict normalise as its training did."""

  def __init__(self, model_name, normalization="keras", **kwargs):
    super().__init__(**kwargs)
    if model_name not in APPLICATIONS:
      raise ValueError(f"unknown application {model_name!r}")
    if normalization not in NORMALIZATIONS:
      raise ValueError(f"unknown normalization {normalization!r}; known: {NORMALIZATIONS}")
    self.model_name = model_name
    self.normalization = normalization

  def call(self, inputs):
    if self.normalization == "torch":
      mean = keras.ops.convert_to_tensor(TORCH_IMAGENET_MEAN, dtype=inputs.dtype)
      std = keras.ops.convert_to_tensor(TORCH_IMAGENET_STD, dtype=inputs.dtype)
      return (inputs / 255.0 - mean) / std
    return APPLICATIONS[self.model_name][1](inputs)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    return {**super().get_config(), "model_name": self.model_name,
            "normalization": self.normalization}


def write_weights_normalization(path, normalization):
  """Records in weights file `path` (an .h5, e.g. a .weights.h5) the input normalisation its
  weights were trained with, so that build() gives the model that preprocessing."""
  import h5py  # pylint: disable=g-import-not-at-top
  if normalization not in NORMALIZATIONS:
    raise ValueError(f"unknown normalization {normalization!r}; known: {NORMALIZATIONS}")
  with h5py.File(path, "a") as f:
    f.attrs[_NORMALIZATION_ATTR] = normalization


def weights_normalization(path):
  """The input normalisation weights file `path` records: "torch" for weights imported by
  tools.import_weights, "keras" for any other file (Keras' own ..._notop.h5 files)."""
  import h5py  # pylint: disable=g-import-not-at-top
  if not h5py.is_hdf5(path):
    return "keras"
  with h5py.File(path, "r") as f:
    value = f.attrs.get(_NORMALIZATION_ATTR, "keras")
  value = value.decode() if isinstance(value, bytes) else str(value)
  if value not in NORMALIZATIONS:
    raise ModelError(f"--weights={path}: records input normalization {value!r}, which this "
                     f"trainer does not know ({', '.join(NORMALIZATIONS)})")
  return value


def _base_network(name, image_shape, weights):
  """The application's convolutional base with global average pooling, named "base"."""
  constructor = APPLICATIONS[name][0]
  if min(image_shape[:2]) < MIN_APPLICATION_SIZE:
    raise ModelError(f"--model={name} needs inputs of at least {MIN_APPLICATION_SIZE}x"
                     f"{MIN_APPLICATION_SIZE} pixels, got {image_shape[0]}x{image_shape[1]}; "
                     "set --image_size")
  if weights == "imagenet":
    if image_shape[2] != 3:
      raise ModelError(f"--weights=imagenet needs 3-channel input, got {image_shape[2]}")
    source = "imagenet"
  elif weights == "none":
    source = None
  else:
    if not os.path.isfile(weights):
      raise ModelError(f"--weights={weights}: no such file (use none, imagenet or the path "
                       f"of a weights file for {name}'s base network)")
    source = None  # loaded below, so that a mismatch can be reported in our words
  try:
    base = constructor(include_top=False, weights=source, input_shape=tuple(image_shape),
                       pooling="avg")
  except Exception as e:  # pylint: disable=broad-except
    if weights == "imagenet":
      raise ModelError(f"--weights=imagenet: Keras could not get {name}'s ImageNet weights "
                       f"({type(e).__name__}: {e}). On a machine without internet, copy the "
                       f"file into ~/.keras/models/ or pass --weights=<path of the file>")
    raise ModelError(f"--model={name}: cannot build it for input {tuple(image_shape)}: "
                     f"{e}") from None
  if source is None and weights != "none":
    load_base_weights(base, weights, name)
  base.name = "base"
  return base


def load_base_weights(base, path, name="the model"):
  """Loads weights file `path` into the base network; ModelError naming the file and the
  mismatch if it does not fit (wrong network, include_top weights, not a weights file)."""
  try:
    base.load_weights(path)
  except Exception as e:  # pylint: disable=broad-except
    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ModelError(f"--weights={path}: does not fit {name}'s base network without its "
                     f"top ({len(base.layers)} layers, {len(base.weights)} weight arrays): "
                     f"{message}") from None


# Applications whose torch_padded form is right (their ZeroPadding2D layers all precede 3x3
# stride-2 convolutions). Others keep Keras' padding with torch weights too.
TORCH_PADDED = ("MobileNetV2",)


def torch_padded(model):
  """A copy of functional application `model` (weights included) whose stride-2
  convolutions pad as torch's do, k // 2 on each side of a k x k kernel.

  For a stride-2 convolution on an even input, Keras pads 0 before and 1 after ("same",
  and MobileNetV2's ZeroPadding2D "..._pad" layers); torch pads 1 on each side, so with
  torch's weights every feature map would be shifted by up to a pixel against the one they
  were trained on. Here a "same" stride-2 Conv2D becomes a ZeroPadding2D then a "valid"
  Conv2D, and the ZeroPadding2D layers pad 1 on each side (right for TORCH_PADDED only).
  """
  config = model.get_config()
  pads = []
  for layer in config["layers"]:
    cfg = layer["config"]
    if layer["class_name"] == "ZeroPadding2D":
      cfg["padding"] = ((1, 1), (1, 1))
    elif (layer["class_name"] == "Conv2D" and cfg["padding"] == "same"
          and tuple(cfg["strides"]) == (2, 2)):
      k = cfg["kernel_size"][0] // 2
      name = cfg["name"] + "_torch_pad"
      pads.append((layer["name"], {
          "module": "keras.layers", "class_name": "ZeroPadding2D", "registered_name": None,
          "name": name, "inbound_nodes": layer["inbound_nodes"],
          "config": {"name": name, "trainable": True, "dtype": cfg["dtype"],
                     "data_format": "channels_last", "padding": ((k, k), (k, k))}}))
      cfg["padding"] = "valid"
      # The convolution now reads the padding's output: its input node, renamed and grown.
      node = copy.deepcopy(layer["inbound_nodes"][0])
      tensor = node["args"][0]["config"]
      tensor["keras_history"] = [name, 0, 0]
      batch, height, width, channels = tensor["shape"]
      tensor["shape"] = [batch, height + 2 * k, width + 2 * k, channels]
      layer["inbound_nodes"] = [node]
  for conv_name, pad in pads:
    index = next(i for i, l in enumerate(config["layers"]) if l["name"] == conv_name)
    config["layers"].insert(index, pad)
  padded = model.__class__.from_config(config)
  for layer in model.layers:
    if layer.weights:
      padded.get_layer(layer.name).set_weights(layer.get_weights())
  return padded


def _application_builder(name):
  def build_application(num_classes, image_shape, weights="none"):
    inputs = keras.Input(shape=image_shape)
    # The weights' origin decides the normalisation: a file from tools.import_weights says
    # "torch"; Keras' own weights (imagenet, ..._notop.h5) and random ones use the family's.
    normalization = "keras" if weights in ("none", "imagenet") or not os.path.isfile(
        weights) else weights_normalization(weights)
    x = ApplicationPreprocess(name, normalization, name="preprocess")(inputs)
    base = _base_network(name, image_shape, weights)
    if normalization == "torch" and name in TORCH_PADDED:
      base = torch_padded(base)  # as the weights were trained
      base.name = "base"
    x = base(x)
    x = layers.Dropout(0.2, name="head_dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32",
                           name="predictions")(x)
    return keras.Model(inputs, outputs, name=name)
  return build_application


# name -> builder(num_classes, image_shape[, weights]). --model's choices come from here.
MODELS = {
    "simple": _simple,
    "basic": _basic,
    **{name: _application_builder(name) for name in APPLICATIONS},
}


class UnknownModelError(ValueError):
  pass


@contextlib.contextmanager
def _dtype_policy(name):
  """Sets Keras' global dtype policy while layers are created, then puts the old one back.

  Layers read the global policy when they are constructed, so the policy only has to be in
  force during `build`; restoring it keeps one run's choice from leaking into the next
  model built in the same process (tests build many).
  """
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy(name)
  try:
    yield
  finally:
    keras.config.set_dtype_policy(previous)


def build(name, num_classes, image_shape, *, dtype_policy="float32", weights="none"):
  """Builds model `name` for `num_classes` classes and inputs of `image_shape` (H, W, C).

  dtype_policy: a Keras policy name, e.g. "mixed_bfloat16" (CPU/TPU) or "mixed_float16"
  (GPU); the output layer stays float32 either way.
  weights: for the applications, "none", "imagenet" or a weights file of the base network.
  """
  if name not in MODELS:
    raise UnknownModelError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
  with _dtype_policy(dtype_policy):
    if name in APPLICATIONS:
      return MODELS[name](num_classes, tuple(image_shape), weights=weights)
    if weights != "none":
      raise ModelError(f"--weights={weights}: only the Keras applications models "
                       f"({', '.join(APPLICATIONS)}) take pretrained weights; to start "
                       f"--model={name} from another run, use --init_from=<its model_dir>")
    return MODELS[name](num_classes, tuple(image_shape))


def base_layers(model):
  """The layers --trainable_layers counts: the application's base network's layers, or for
  the other models every layer before the classification head (the last layer)."""
  try:
    base = model.get_layer("base")
  except ValueError:
    return list(model.layers[:-1])
  return [layer for layer in base.layers if not isinstance(layer, keras.layers.InputLayer)]


def set_trainable(model, trainable_layers, freeze_batchnorm=False):
  """Freezes the base: None = everything trains, 0 = only the head, N = the last N layers of
  the base and the head; with freeze_batchnorm, the base's BatchNorm layers stay frozen
  among them (config.freeze_batchnorm says why). Returns the number of base layers that
  train.

  Frozen BatchNorm layers run in inference mode (Keras 3 ties that to `trainable`), so
  their ImageNet (or pretraining) statistics are kept, not refitted to small batches.
  """
  layers_ = base_layers(model)
  if trainable_layers is not None and trainable_layers > len(layers_):
    raise ModelError(f"--trainable_layers={trainable_layers}: {model.name}'s base has only "
                     f"{len(layers_)} layers")
  model.trainable = True
  for layer in model.layers:
    layer.trainable = True
  first_trainable = 0 if trainable_layers is None else len(layers_) - trainable_layers
  for i, layer in enumerate(layers_):
    layer.trainable = i >= first_trainable and not (
        freeze_batchnorm and isinstance(layer, keras.layers.BatchNormalization))
  return sum(layer.trainable for layer in layers_[first_trainable:])


def _weighted_layers(model):
  """Layers with weights, in order, the nested base's expanded (so that a base and its
  copy line up layer by layer)."""
  out = []
  for layer in model.layers:
    if isinstance(layer, keras.Model):
      out.extend(_weighted_layers(layer))
    elif layer.weights:
      out.append(layer)
  return out


def _normalization(model):
  """The input normalisation of an application model ("keras" or "torch"), None for others."""
  try:
    return model.get_layer("preprocess").normalization
  except (ValueError, AttributeError):
    return None


def init_from(model, source_dir):
  """Copies the weights of every layer but the classification head from another run's
  exported best model (`<source_dir>/model.keras`) into `model`, layer by layer in order.

  The two models must be the same network (the head may differ in classes); a layer whose
  type or weight shapes differ is a ModelError naming it. Returns the number of layers copied.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  path = source_dir.rstrip("/") + "/model.keras"
  if not tf.io.gfile.exists(path):
    raise ModelError(f"--init_from={source_dir}: {path} not found; point it at the "
                     "--model_dir of a finished run")
  try:
    source = keras.models.load_model(path, compile=False)
  except Exception as e:  # pylint: disable=broad-except
    raise ModelError(f"--init_from={source_dir}: cannot load {path}: {e}") from None
  src_norm, dst_norm = _normalization(source), _normalization(model)
  if src_norm != dst_norm:
    # The copied weights were trained on inputs normalised the other way.
    raise ModelError(f"--init_from={source_dir}: {path} normalises its input the {src_norm} "
                     f"way, this model the {dst_norm} way; pass the --weights file that "
                     f"run started from (its flags.txt has it), so that both agree")
  src, dst = _weighted_layers(source)[:-1], _weighted_layers(model)[:-1]
  if len(src) != len(dst):
    raise ModelError(f"--init_from={source_dir}: {path} is a {source.name} model with "
                     f"{len(src)} layers below its head; this {model.name} model has "
                     f"{len(dst)}. Use a run of the same --model.")
  for i, (s, d) in enumerate(zip(src, dst)):
    src_shapes = [tuple(w.shape) for w in s.weights]
    dst_shapes = [tuple(w.shape) for w in d.weights]
    if type(s) is not type(d) or src_shapes != dst_shapes:
      raise ModelError(f"--init_from={source_dir}: layer {i} ({d.name}, "
                       f"{type(d).__name__} {dst_shapes}) does not match {path}'s "
                       f"({s.name}, {type(s).__name__} {src_shapes}); a different "
                       "--model or --image_size?")
  for s, d in zip(src, dst):
    d.set_weights(s.get_weights())
  return len(dst)
