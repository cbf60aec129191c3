"""Turning untrusted image bytes into what a record holds, with PIL (no TensorFlow).

`prepare` decodes the bytes once, which both checks that the whole file decodes (a truncated
JPEG fails here, not in the trainer) and gives the pixels for the train-split statistics.
Images that are not 8-bit RGB (grayscale, RGBA, palette, CMYK, 16-bit) are converted and the
kind is reported, so the caller can count them. So are two things a viewer does that a decoder
does not: an EXIF orientation is applied (a phone's portrait JPEG is stored upright, as it is
shown, since TensorFlow's decoders ignore EXIF), and of an animated image (GIF, APNG, WebP)
the first frame is kept. What is stored is the Beam job's --image_format (features.py):
`source` keeps the original bytes when they are already JPEG or PNG of an 8-bit RGB still
image that needs no rotation and no resize, and stores everything else as PNG, which is
lossless and which tf.io.decode_image reads; `png` stores PNG always; `raw` the pixels.
"""

import io
import warnings

import numpy as np
from PIL import ExifTags
from PIL import Image
from PIL import ImageOps

from pipeline import features

# Formats whose original bytes the trainer can decode as they are.
_KEEP_FORMATS = {"JPEG": features.JPEG, "PNG": features.PNG}


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
    return "16bit"  # (or 32-bit int/float single channel, rare: TIFF)
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


def _check_image_format(image_format):
  if image_format not in features.IMAGE_FORMATS:
    raise ValueError(f"image_format={image_format!r}: expected one of "
                     f"{', '.join(features.IMAGE_FORMATS)}")


def store(pixels, image_format=features.SOURCE, original=None):
  """(encoded bytes, image/format) of the pixels (uint8 [H, W, 3]) as `image_format` stores
  them. original: (file bytes, "jpeg"|"png") when the file's own bytes show exactly these
  pixels (no conversion, no resize), which `source` keeps, and `png` too when they are PNG."""
  _check_image_format(image_format)
  if image_format == features.RAW:
    return features.raw_pixels(pixels), features.RAW
  if original is not None and (image_format == features.SOURCE
                               or original[1] == features.PNG):
    return original
  return encode_png(pixels), features.PNG


def prepare(data, image_size=None, image_format=features.SOURCE):
  """Checks and converts one image file's bytes.

  Args:
    data: the file's bytes.
    image_size: (height, width) to resize to, or None to keep the size.
    image_format: what to store (features.IMAGE_FORMATS; see `store`).
  Returns:
    (encoded bytes, format "jpeg"|"png"|"raw", pixels uint8 [H, W, 3] as a viewer shows them,
     kinds: a tuple of what was converted, e.g. ("grayscale",), ("exif_orientation",), ())
  Raises:
    BadImage with reason empty_file, not_an_image, truncated_image, corrupt_image or
    image_too_large.
  """
  _check_image_format(image_format)  # before the image: a bad argument is not a bad image
  if not data:
    raise BadImage("empty_file", "0 bytes")
  try:
    with warnings.catch_warnings():
      # PIL only warns between MAX_IMAGE_PIXELS and twice that; one such image would hold
      # hundreds of MB in a Beam worker, so the warning is an error too.
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      _check_complete(data)
      img = Image.open(io.BytesIO(data))
      fmt = img.format
      # The bit depth is only visible before load() (which clears `tile`): PIL reads a 16-bit
      # RGB PNG as mode "RGB" through the raw mode "RGB;16B".
      deep = any(";16" in str(t.args) for t in img.tile)
      img.load()
  except BadImage:
    raise
  except Image.UnidentifiedImageError:
    if _signature(data):  # An image header PIL cannot parse: a damaged file, not another type.
      raise BadImage("corrupt_image", f"{_signature(data)} header does not parse") from None
    raise BadImage("not_an_image", f"{len(data)} bytes in no image format PIL knows") from None
  except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
    raise BadImage("image_too_large", str(e)) from None
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for mangled files.
    reason = "truncated_image" if "truncated" in str(e).lower() else "corrupt_image"
    raise BadImage(reason, f"{_signature(data) or 'image'}: {e}") from None
  kind = _kind(img.mode)
  if deep and kind is None:
    kind = "16bit"
  kinds = [kind] if kind else []
  if getattr(img, "n_frames", 1) > 1:  # PIL opens (and load() decoded) the first frame.
    kinds.append("animated_first_frame")
  if _orientation(img) in _ROTATED:
    img = ImageOps.exif_transpose(img)  # PIL's own table of the 7 rotations and flips.
    kinds.append("exif_orientation")
  kinds = tuple(kinds)
  try:
    pixels = _to_rgb8(img)
  except Exception as e:  # A mode PIL opens but cannot convert: keep the job alive.
    raise BadImage("corrupt_image", f"{fmt} mode {img.mode}: cannot convert to RGB ({e})") from None
  if image_size is not None and pixels.shape[:2] != tuple(image_size):
    resized = Image.fromarray(pixels).resize((image_size[1], image_size[0]), Image.BILINEAR)
    pixels = np.asarray(resized, dtype=np.uint8)
    return (*store(pixels, image_format), pixels, kinds)
  original = (data, _KEEP_FORMATS[fmt]) if not kinds and fmt in _KEEP_FORMATS else None
  return (*store(pixels, image_format, original), pixels, kinds)


# EXIF orientations 2..8 (1 is upright; other values are invalid and, as viewers do, ignored).
_ROTATED = frozenset(range(2, 9))


def _orientation(img):
  """The image's EXIF orientation (JPEG APP1, PNG eXIf, TIFF tags), or None. A damaged EXIF
  block is ignored, as viewers ignore it: it does not stop the pixels from showing."""
  try:
    return img.getexif().get(ExifTags.Base.Orientation)
  except Exception:  # pylint: disable=broad-except  # PIL raises many types for bad EXIF.
    return None


# Leading bytes of the formats an image source is likely to hold.
_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"),
               (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


def _signature(data):
  """The format whose signature starts data (WebP: RIFF....WEBP), or None."""
  if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
    return "WEBP"
  return next((name for magic, name in _SIGNATURES if data.startswith(magic)), None)


def _check_complete(data):
  """A PNG must hold its closing IEND chunk and a JPEG its end-of-image marker (FF D9, which
  entropy-coded data cannot contain). PIL decodes a PNG cut after the last pixel row without
  complaint, but TensorFlow's decode_png refuses it ("Invalid PNG data"), which would stop the
  trainer; and a file cut inside its header is truncated, not corrupt."""
  signature = _signature(data)
  if signature == "PNG" and data.rfind(b"IEND") < 8:
    raise BadImage("truncated_image", "PNG: no IEND chunk (the file was cut short)")
  if signature == "JPEG" and data.rfind(b"\xff\xd9") < 2:
    raise BadImage("truncated_image", "JPEG: no end-of-image marker (the file was cut short)")


def from_pixels(pixels, image_size=None, image_format=features.SOURCE):
  """Pixels a source handed over (uint8 [H, W, 3]) -> (encoded bytes, "png"|"raw", pixels):
  PNG unless image_format is raw."""
  pixels = np.asarray(pixels, dtype=np.uint8)
  if image_size is not None and pixels.shape[:2] != tuple(image_size):
    pixels = np.asarray(Image.fromarray(pixels).resize((image_size[1], image_size[0]),
                                                       Image.BILINEAR), dtype=np.uint8)
  return (*store(pixels, image_format), pixels)
