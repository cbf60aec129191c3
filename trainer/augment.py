"""Image augmentation as one projective transform per image: pure tensor functions.

The lab report being reproduced trained with Keras'
`ImageDataGenerator(horizontal_flip=True, rotation_range=15, zoom_range=0.1,
width_shift_range=0.1, height_shift_range=0.1)` (fill_mode "nearest", bilinear). That
class draws, per image, a rotation, a shift, a zoom and a flip, and resamples the image
with scipy, one image at a time in Python. Here the same draws are made for a whole batch
with stateless random ops, each is written as a 3x3 matrix, the four are multiplied into
one matrix per image, and the batch is resampled by ONE `ImageProjectiveTransformV3` call.
That runs in tf.data on the host or inside a compiled train step on an accelerator.

Conventions (shared by every matrix builder below):
  * A matrix maps an OUTPUT pixel (x, y, 1) to the INPUT point it samples, which is what
    `ImageProjectiveTransformV3` takes. x is the column, y the row, in pixels; pixel
    centres sit at integer coordinates, so the image centre is ((W-1)/2, (H-1)/2).
  * Applying transform A to an image and then B to the result equals applying
    `compose(A, B) == A @ B` once (the output of B samples the output of A).
  * Matrices are float32, batched: [B, 3, 3]. `to_params` turns them into the op's [B, 8].

The draws follow ImageDataGenerator's (keras/src/legacy/preprocessing/image.py):
rotation angle uniform in [-rotation_deg, rotation_deg]; shifts uniform in
[-shift, shift] * size; zoom factors zx, zy drawn independently, uniform in [1-zoom, 1+zoom]
and applied to the sampling coordinates (so > 1 shows more of the image, i.e. zooms out);
horizontal flip with probability 1/2; order rotate -> shift -> zoom -> flip. (Keras scales
its "height" shift by the height but applies it to columns; for the report's equal shifts
on square images that is the same distribution.)

Two resamplers compute the same pixels (bilinear, edges extended), within one grey level:
  "op"   one `ImageProjectiveTransformV3` call: the reference. It has no XLA kernel, so it
         cannot run inside a jit-compiled train step (TPU, or `jit_compile=True`).
  "xla"  the same sampling written as gathers and compiled with XLA: runs anywhere XLA
         does, inside or outside a compiled step, and is ~4x faster than "op" on the CPU
         (XLA fuses the per-pixel arithmetic that the op redoes for every channel).
`tools/bench_input.py` measures both; BENCHMARKS.md has the figures.
"""

import dataclasses
import math

import tensorflow as tf

RESAMPLERS = ("xla", "op")
# One named algorithm (not "auto_select", which may pick per device), so that a seed draws
# the same transforms on the host, in tf.data and inside a jit-compiled step.
RNG_ALG = "philox"


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """What `augment_batch` draws per image. Defaults are the report's ImageDataGenerator."""
  flip: bool = True           # horizontal flip with probability 1/2
  rotation_deg: float = 15.0  # angle uniform in [-rotation_deg, +rotation_deg], degrees
  zoom: float = 0.1           # sampling scale per axis uniform in [1 - zoom, 1 + zoom]
  width_shift: float = 0.1    # horizontal shift uniform in [-s, s], fraction of the width
  height_shift: float = 0.1   # vertical shift uniform in [-s, s], fraction of the height
  resampler: str = "xla"      # "xla" or "op": how, not what (see the module docstring)

  def __post_init__(self):
    for name in ("rotation_deg", "zoom", "width_shift", "height_shift"):
      if getattr(self, name) < 0:
        raise ValueError(f"AugmentConfig.{name} must be >= 0, got {getattr(self, name)}")
    if self.zoom >= 1:
      raise ValueError(f"AugmentConfig.zoom must be < 1 (a fraction), got {self.zoom}")
    if self.width_shift >= 1 or self.height_shift >= 1:
      raise ValueError("AugmentConfig shifts are fractions of the size and must be < 1, got "
                       f"width_shift={self.width_shift}, height_shift={self.height_shift}")
    if self.resampler not in RESAMPLERS:
      raise ValueError(f"AugmentConfig.resampler must be one of {RESAMPLERS}, "
                       f"got {self.resampler!r}")

  @classmethod
  def none(cls):
    """The identity: no augmentation."""
    return cls(flip=False, rotation_deg=0.0, zoom=0.0, width_shift=0.0, height_shift=0.0)

  @property
  def enabled(self):
    return bool(self.flip or self.rotation_deg or self.zoom or self.width_shift
                or self.height_shift)


# --- single transforms, each [B, 3, 3] ------------------------------------------------------


def _float(x):
  return tf.cast(x, tf.float32)


def _affine(a0, a1, a2, b0, b1, b2):
  """[B, 3, 3] from per-image rows; every argument is [B] (or broadcastable to it)."""
  values = [_float(v) for v in (a0, a1, a2, b0, b1, b2)]
  # Broadcast scalars (e.g. a constant 0) to the batch shape of the per-image values.
  batch_zeros = tf.zeros_like(values[0] + values[1] + values[2] + values[3] + values[4]
                              + values[5])
  a0, a1, a2, b0, b1, b2 = (v + batch_zeros for v in values)
  zero = tf.zeros_like(a0)
  one = tf.ones_like(a0)
  rows = [tf.stack([a0, a1, a2], -1), tf.stack([b0, b1, b2], -1),
          tf.stack([zero, zero, one], -1)]
  return tf.stack(rows, axis=-2)


def _centre(height, width):
  return (_float(width) - 1.0) / 2.0, (_float(height) - 1.0) / 2.0


def flip_matrix(flip, width):
  """Mirrors left-right the images where `flip` [B] (bool) is true; exact (no resampling):
  output column x samples input column W-1-x."""
  sign = tf.where(tf.cast(flip, tf.bool), -1.0, 1.0)
  offset = tf.where(tf.cast(flip, tf.bool), _float(width) - 1.0, 0.0)
  return _affine(sign, 0.0, offset, 0.0, 1.0, 0.0)


def rotation_matrix(angle_rad, height, width):
  """Rotates the content counter-clockwise (as displayed, rows growing downwards) by
  `angle_rad` [B] radians about the image centre."""
  angle = _float(angle_rad)
  cx, cy = _centre(height, width)
  c, s = tf.cos(angle), tf.sin(angle)
  # input = R (output - centre) + centre, where R is the inverse (clockwise) rotation in
  # y-down pixel coordinates: a point to the right of the centre lands above it.
  return _affine(c, -s, cx - c * cx + s * cy, s, c, cy - s * cx - c * cy)


def zoom_matrix(zx, zy, height, width):
  """Scales the sampling coordinates about the centre by zx (columns), zy (rows), each [B]:
  a factor > 1 samples a larger area, so the content shrinks (zooms out), as in Keras."""
  zx, zy = _float(zx), _float(zy)
  cx, cy = _centre(height, width)
  return _affine(zx, 0.0, cx - zx * cx, 0.0, zy, cy - zy * cy)


def shift_matrix(dx, dy):
  """Moves the content right by dx and down by dy pixels, each [B]."""
  return _affine(1.0, 0.0, -_float(dx), 0.0, 1.0, -_float(dy))


def compose(*matrices):
  """One matrix equal to applying `matrices` to the image in the order given."""
  out = matrices[0]
  for m in matrices[1:]:
    out = tf.linalg.matmul(out, m)
  return out


def to_params(matrices):
  """[B, 3, 3] -> the op's [B, 8] rows (a0 a1 a2 b0 b1 b2 c0 c1), normalised so m22 = 1."""
  flat = tf.reshape(matrices, [-1, 9])
  return flat[:, :8] / flat[:, 8:9]


# --- random draws and the batched resample --------------------------------------------------


def _unit_uniform(shape, seed):
  """float32 uniform in [0, 1), the same in and out of XLA.

  tf.random.stateless_uniform's float path differs under XLA for the same seed and
  algorithm (its random bits agree, the bits-to-float step does not), so the floats are
  made here from the top 24 bits: exact in float32's 24-bit significand.
  """
  bits = tf.random.stateless_uniform(shape, seed, minval=None, maxval=None, dtype=tf.uint32,
                                     alg=RNG_ALG)
  return tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32) * (1.0 / (1 << 24))


def random_transforms(batch_size, height, width, cfg, seed):
  """Draws one composed transform per image: [batch_size, 8] float32 for the op.

  `seed` is a shape-[2] integer tensor (a stateless seed): the same seed gives the same
  draws on any device, which keeps runs reproducible.
  """
  seed = tf.cast(seed, tf.int64)
  seeds = tf.random.experimental.stateless_split(seed, num=6, alg=RNG_ALG)
  shape = tf.reshape(tf.cast(batch_size, tf.int32), [1])

  def uniform(i, half_range, centre=0.0):
    return centre + half_range * (2.0 * _unit_uniform(shape, seeds[i]) - 1.0)

  height_f, width_f = _float(height), _float(width)
  angle = uniform(0, cfg.rotation_deg * math.pi / 180.0)
  dx = uniform(1, cfg.width_shift) * width_f
  dy = uniform(2, cfg.height_shift) * height_f
  zx = uniform(3, cfg.zoom, centre=1.0)
  zy = uniform(4, cfg.zoom, centre=1.0)
  if cfg.flip:
    flip = _unit_uniform(shape, seeds[5]) < 0.5
  else:
    flip = tf.zeros(shape, tf.bool)
  matrix = compose(rotation_matrix(angle, height, width), shift_matrix(dx, dy),
                   zoom_matrix(zx, zy, height, width), flip_matrix(flip, width))
  return to_params(matrix)


def _resample_op(images, params):
  """float32 [B, H, W, C] -> same, with one ImageProjectiveTransformV3 call."""
  return tf.raw_ops.ImageProjectiveTransformV3(
      images=images, transforms=params, output_shape=tf.shape(images)[1:3],
      fill_value=0.0, interpolation="BILINEAR", fill_mode="NEAREST")


@tf.function(jit_compile=True)
def _resample_xla(images, params):
  """float32 [B, H, W, C] -> same: the op's arithmetic, written out for XLA.

  For each output pixel (x, y): the projected input point, clamped into the image (the
  op's "NEAREST" fill: clamp, then interpolate), blended from its 4 neighbours. The
  coordinates are computed once per pixel and shared by the channels.
  """
  shape = tf.shape(images)
  batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
  height_f, width_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  y, x = tf.meshgrid(tf.range(height_f), tf.range(width_f), indexing="ij")  # [H, W]
  p = params[:, :, None, None]  # [B, 8, 1, 1]: one row per image, broadcast over pixels
  k = p[:, 6] * x + p[:, 7] * y + 1.0
  x_in = tf.clip_by_value((p[:, 0] * x + p[:, 1] * y + p[:, 2]) / k, 0.0, width_f - 1.0)
  y_in = tf.clip_by_value((p[:, 3] * x + p[:, 4] * y + p[:, 5]) / k, 0.0, height_f - 1.0)
  x0, y0 = tf.floor(x_in), tf.floor(y_in)
  wx, wy = (x_in - x0)[..., None], (y_in - y0)[..., None]  # [B, H, W, 1] weights
  x0, y0 = tf.cast(x0, tf.int32), tf.cast(y0, tf.int32)
  # On the last row/column the second neighbour has weight 0; clamping keeps its index
  # inside the image all the same (else it would read the next row, or past the batch).
  x1, y1 = tf.minimum(x0 + 1, width - 1), tf.minimum(y0 + 1, height - 1)
  pixels = tf.reshape(images, [-1, channels])  # [B*H*W, C]
  first = (tf.range(batch) * height * width)[:, None, None]  # index of each image's (0, 0)

  def at(row, col):
    return tf.gather(pixels, first + row * width + col)

  top = at(y0, x0) * (1.0 - wx) + at(y0, x1) * wx
  bottom = at(y1, x0) * (1.0 - wx) + at(y1, x1) * wx
  return top * (1.0 - wy) + bottom * wy


def apply_transforms(images, params, resampler="xla"):
  """Resamples images [B, H, W, C] with per-image params [B, 8] (or [1, 8] for all):
  bilinear, edges extended ("nearest", as the report). Returns the input dtype.

  Integer images are resampled in float32 and rounded: the op's own uint8 path truncates
  (a 0/1 edge half a pixel over gives 0) and is slower here.
  """
  images = tf.convert_to_tensor(images)
  dtype = images.dtype
  work = images if dtype == tf.float32 else tf.cast(images, tf.float32)
  params = tf.cast(params, tf.float32)
  if resampler == "op":
    out = _resample_op(work, params)
  elif resampler == "xla":
    params = tf.broadcast_to(params, [tf.shape(work)[0], 8])  # a [1, 8] row for all
    out = _resample_xla(work, params)
  else:
    raise ValueError(f"resampler must be one of {RESAMPLERS}, got {resampler!r}")
  out = tf.ensure_shape(out, images.shape)
  if dtype == tf.float32:
    return out
  if dtype.is_integer:
    return tf.saturate_cast(tf.round(out), dtype)
  return tf.cast(out, dtype)


def augment_batch(images, cfg, seed=None):
  """Augments a batch [B, H, W, C] (uint8 or float) per `cfg`; same dtype and shape out.

  `seed`: a shape-[2] integer tensor for reproducible draws (in tf.data, derive one per
  batch, e.g. with `tf.random.experimental.stateless_fold_in`); None draws a fresh seed.
  Labels are not an argument: the geometry of a CIFAR label does not change.
  """
  if cfg is None or not cfg.enabled:
    return images
  images = tf.convert_to_tensor(images)
  if seed is None:
    seed = tf.random.uniform([2], maxval=tf.int64.max, dtype=tf.int64)
  shape = tf.shape(images)
  params = random_transforms(shape[0], shape[1], shape[2], cfg, seed)
  return apply_transforms(images, params, resampler=cfg.resampler)
