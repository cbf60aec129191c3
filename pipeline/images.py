"""Turning untrusted image bytes into what a record holds, with PIL (no TensorFlow).

`prepare` decodes the bytes once, which both checks that the whole file decodes (a truncated
JPEG fails here, not in the trainer) and gives the pixels for the train-split statistics.
Images that are not 8-bit RGB (grayscale, RGBA, palette, CMYK, 16-bit) are converted and the
kind is reported, so the caller can count them. The original bytes are kept when they are
already JPEG or PNG of an 8-bit RGB image and no resize is asked; everything else is stored as
PNG, which is lossless and which tf.io.decode_image reads.
"""

import io
import warnings

import numpy as np
from PIL import Image

# Formats whose original bytes the trainer can decode as they are.
_KEEP_FORMATS = {"JPEG": "jpeg", "PNG": "png"}


class BadImage(ValueError):
  """An input that cannot become a record. `reason` is a short stable slug for counters."""

  def __init__(self, reason, detail):
    super().__init__(f"{reason}: {detail}")
    self.reason = reason
    self.detail = detail


def _kind(mode):
  """The conversion kind for a PIL mode, or None for 8-bit RGB."""
  if mode == "RGB":
    return None
  if mode in ("L", "1", "LA"):
    return "grayscale"
  if mode in ("RGBA", "RGBa"):
    return "rgba"
  if mode in ("P", "PA"):
    return "palette"
  if mode == "CMYK":
    return "cmyk"
  if mode.startswith("I;16") or mode in ("I", "F"):
    return "16bit"
  return "other_" + mode.replace(";", "_").lower()


def _to_rgb8(img):
  """PIL image of any mode -> 8-bit RGB numpy array [H, W, 3]."""
  mode = img.mode
  if mode.startswith("I;16") or mode in ("I", "F"):
    # 16-bit (or 32-bit) single channel: scale to 0..255 rather than clip, as PIL's
    # convert("L") would clip everything above 255 to white.
    a = np.asarray(img, dtype=np.float64)
    top = 65535.0 if mode != "F" else max(float(a.max()), 1.0)
    a = np.clip(a * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)
    return np.repeat(a[:, :, None], 3, axis=2)
  # Alpha is dropped (not composited onto a colour); palette and CMYK map through PIL.
  return np.asarray(img.convert("RGB"), dtype=np.uint8)


def encode_png(pixels):
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)  # 1: fast; size ~ level 6.
  return buf.getvalue()


def prepare(data, image_size=None):
  """Checks and converts one image file's bytes.

  Args:
    data: the file's bytes.
    image_size: (height, width) to resize to, or None to keep the size.
  Returns:
    (encoded bytes, format "jpeg"|"png", pixels uint8 [H, W, 3], kind or None)
  Raises:
    BadImage with reason empty_file, not_an_image, truncated_image or corrupt_image.
  """
  if not data:
    raise BadImage("empty_file", "0 bytes")
  try:
    img = Image.open(io.BytesIO(data))
  except Image.UnidentifiedImageError:
    raise BadImage("not_an_image", f"{len(data)} bytes in no image format PIL knows") from None
  except Exception as e:  # PIL raises many types for mangled headers.
    raise BadImage("corrupt_image", f"header: {e}") from None
  fmt = img.format
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      img.load()
  except OSError as e:
    reason = "truncated_image" if "truncated" in str(e).lower() else "corrupt_image"
    raise BadImage(reason, f"{fmt}: {e}") from None
  except Exception as e:
    raise BadImage("corrupt_image", f"{fmt}: {e}") from None
  kind = _kind(img.mode)
  pixels = _to_rgb8(img)
  if image_size is not None and pixels.shape[:2] != tuple(image_size):
    resized = Image.fromarray(pixels).resize((image_size[1], image_size[0]), Image.BILINEAR)
    pixels = np.asarray(resized, dtype=np.uint8)
    return encode_png(pixels), "png", pixels, kind
  if kind is None and fmt in _KEEP_FORMATS:
    return data, _KEEP_FORMATS[fmt], pixels, kind
  return encode_png(pixels), "png", pixels, kind


def from_pixels(pixels, image_size=None):
  """Pixels a source handed over (uint8 [H, W, 3]) -> (PNG bytes, "png", pixels)."""
  pixels = np.asarray(pixels, dtype=np.uint8)
  if image_size is not None and pixels.shape[:2] != tuple(image_size):
    pixels = np.asarray(Image.fromarray(pixels).resize((image_size[1], image_size[0]),
                                                       Image.BILINEAR), dtype=np.uint8)
  return encode_png(pixels), "png", pixels
