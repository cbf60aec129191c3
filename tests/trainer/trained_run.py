"""One tiny trained run, shared by the tests of the exported model (predict, evaluate,
serving): trained once per pytest process, whichever of those test files asks first.

It is the smallest real run the trainer tests use: `simple` on the default test data (3
classes of the shipped CIFAR-10 JPEGs, 96 train images), one epoch of 6 steps, one device.
Treat it as read-only.
"""

from trainer import config as config_lib
from trainer import strategy as strategy_lib
from trainer import train as train_lib

_RUNS = {}  # data_dir -> model_dir


def model_dir(tmp_path_factory, data_dir):
  """The --model_dir of a finished run on `data_dir` (trained on the first call)."""
  if data_dir not in _RUNS:
    run = tmp_path_factory.mktemp("trained_run") / "run"
    config = config_lib.Config(data_dir=data_dir, model_dir=str(run), batch_size=16,
                               epochs=1, learning_rate=1e-3)
    train_lib.train_and_evaluate(config, strategy_lib.make_strategy("one_device"))
    _RUNS[data_dir] = str(run)
  return _RUNS[data_dir]


def write_images(out_dir):
  """Real test images of other sizes and modes, made from the sample's test JPEGs (classes
  of the default test data): {name: path}.

    jpeg_32       a test JPEG as it is (32 x 32, as the model's input)
    jpeg_upscaled another, upscaled to 96 x 72 (bicubic) and saved as JPEG
    png_gray      another, 48 x 48 grayscale PNG
    png_rgba      another, 64 x 40 RGBA PNG (alpha varies)
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from tests import testdata  # pylint: disable=g-import-not-at-top
  sources = [path for path, _ in testdata.sample_files(
      "test", classes=("airplane", "automobile", "bird"), per_class=2)]
  out = {"jpeg_32": out_dir / "plane.jpg", "jpeg_upscaled": out_dir / "car_big.jpg",
         "png_gray": out_dir / "bird_gray.png", "png_rgba": out_dir / "plane_rgba.png"}
  out["jpeg_32"].write_bytes(sources[0].read_bytes())
  Image.open(sources[2]).resize((96, 72), Image.BICUBIC).save(out["jpeg_upscaled"],
                                                               quality=90)
  Image.open(sources[4]).resize((48, 48), Image.BICUBIC).convert("L").save(out["png_gray"])
  rgba = Image.open(sources[1]).resize((64, 40), Image.BICUBIC).convert("RGBA")
  alpha = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (40, 1))
  rgba.putalpha(Image.fromarray(alpha))
  rgba.save(out["png_rgba"])
  return {name: str(path) for name, path in out.items()}
