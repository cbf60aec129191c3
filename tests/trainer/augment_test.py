"""trainer/augment.py: the composed transform, its draws, and where it runs."""

import dataclasses
import math

import numpy as np
import pytest
import tensorflow as tf

from tests import testdata
from trainer import augment

REPORT = augment.AugmentConfig()  # the report's ImageDataGenerator settings


def _cifar_batch(n=8):
  """Real CIFAR-10 images, uint8 [n, 32, 32, 3]."""
  files = testdata.sample_files("train", per_class=1)[:n]
  return np.stack([tf.io.decode_jpeg(p.read_bytes(), channels=3).numpy() for p, _ in files])


def _coordinate_image(size):
  """float32 [1, size, size, 3]: channel 0 holds the column, 1 the row, 2 a constant.

  Bilinear interpolation of a linear function is exact, so after any transform each
  interior pixel holds exactly the input coordinate it sampled: a test of the geometry
  itself, free of interpolation error.
  """
  rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
  return np.stack([cols, rows, np.full_like(cols, 7.0)], -1)[None]


def _apply(images, matrix, resampler="op"):
  return augment.apply_transforms(images, augment.to_params(matrix), resampler).numpy()


# Fixed, moderate draws (inside the report's ranges) used by the geometry tests.
H = W = 48
ANGLE = math.radians(12.0)
DX, DY = 2.5, -1.5       # pixels
ZX, ZY = 1.08, 0.93


def _singles(flip=True):
  return [augment.rotation_matrix([ANGLE], H, W), augment.shift_matrix([DX], [DY]),
          augment.zoom_matrix([ZX], [ZY], H, W), augment.flip_matrix([flip], W)]


@pytest.mark.parametrize("resampler", augment.RESAMPLERS)
def test_composed_equals_singles_applied_one_after_another_exactly_on_coordinates(resampler):
  image = _coordinate_image(H)
  sequential = image
  for m in _singles():
    sequential = _apply(sequential, m, resampler)
  composed = _apply(image, augment.compose(*_singles()), resampler)
  # Interior: no sample in the chain left the image (edge filling differs there).
  inner = (slice(None), slice(14, 34), slice(14, 34))
  np.testing.assert_allclose(composed[inner], sequential[inner], atol=2e-3)
  # The transform moved things: a wrong order or a missing step would not pass the above.
  assert np.abs(composed[inner] - image[inner]).max() > 3.0


def test_composed_equals_singles_on_a_real_image_within_interpolation_error():
  image = tf.image.resize(_cifar_batch(1).astype(np.float32), (H, W)).numpy()
  sequential = image
  for m in _singles():
    sequential = _apply(sequential, m)
  composed = _apply(image, augment.compose(*_singles()))
  inner = (slice(None), slice(14, 34), slice(14, 34))
  # Four bilinear resamplings blur more than one: a few grey levels on average, against
  # tens of grey levels between the input and its transform.
  error = np.abs(composed[inner] - sequential[inner]).mean()
  change = np.abs(composed[inner] - image[inner]).mean()
  assert error < 4.0
  assert change > 5 * error


@pytest.mark.parametrize("resampler", augment.RESAMPLERS)
def test_matches_the_reports_image_data_generator_for_the_same_draws(resampler):
  """The fidelity check: same parameters, same pixels as Keras' ImageDataGenerator."""
  from keras.src.legacy.preprocessing.image import ImageDataGenerator
  generator = ImageDataGenerator()  # fill_mode "nearest", bilinear (order 1)
  image = _cifar_batch(1).astype(np.float32)
  angle_deg, dx, dy, zx, zy = 11.0, 2.0, -3.0, 1.07, 0.94
  # Keras' tx moves the content left along columns and ty up along rows (the matrix is
  # built in (column, row) order), both in pixels; theta is counter-clockwise degrees.
  expected = generator.apply_transform(
      image[0], {"theta": angle_deg, "tx": -dx, "ty": -dy, "zx": zx, "zy": zy,
                 "flip_horizontal": True})
  matrix = augment.compose(
      augment.rotation_matrix([math.radians(angle_deg)], 32, 32),
      augment.shift_matrix([dx], [dy]), augment.zoom_matrix([zx], [zy], 32, 32),
      augment.flip_matrix([True], 32))
  ours = _apply(image, matrix, resampler)[0]
  np.testing.assert_allclose(ours, expected, atol=0.05)  # grey levels, 0-255 scale


def test_xla_resampler_gives_the_ops_pixels_including_the_extended_edges():
  wide = augment.AugmentConfig(rotation_deg=40, zoom=0.3, width_shift=0.4, height_shift=0.4)
  images = _cifar_batch()
  params = augment.random_transforms(len(images), 32, 32, wide, seed=[9, 9])
  floats = images.astype(np.float32)
  op = augment.apply_transforms(floats, params, "op").numpy()
  xla = augment.apply_transforms(floats, params, "xla").numpy()
  np.testing.assert_allclose(xla, op, atol=0.01)  # float32 rounding, grey levels
  op8 = augment.apply_transforms(images, params, "op").numpy().astype(int)
  xla8 = augment.apply_transforms(images, params, "xla").numpy().astype(int)
  assert np.abs(xla8 - op8).max() <= 1  # a x.5 may round either way
  # One [1, 8] row for the whole batch works as for the op.
  np.testing.assert_allclose(augment.apply_transforms(floats, params[:1], "xla"),
                             augment.apply_transforms(floats, params[:1], "op"), atol=0.01)


def test_xla_resampler_runs_in_a_jit_compiled_step_where_the_op_cannot():
  images = _cifar_batch()
  seed = tf.constant([1, 2], tf.int64)

  def step(cfg):
    return tf.function(lambda x: augment.augment_batch(x, cfg, seed=seed), jit_compile=True)

  compiled = step(REPORT)(images).numpy()
  np.testing.assert_array_equal(compiled, augment.augment_batch(images, REPORT, seed=seed))
  with pytest.raises(tf.errors.InvalidArgumentError, match="ImageProjectiveTransformV3"):
    step(dataclasses.replace(REPORT, resampler="op"))(images)


def test_rotation_is_counter_clockwise_and_zoom_above_one_zooms_out():
  image = np.zeros([1, 9, 9, 1], np.float32)
  image[0, 4, 6] = 1.0  # two pixels right of the centre (4, 4)
  rotated = _apply(image, augment.rotation_matrix([math.pi / 2], 9, 9))
  assert list(zip(*np.nonzero(rotated[0, ..., 0] > 0.5))) == [(2, 4)]  # now above it
  zoomed_in = _apply(image, augment.zoom_matrix([0.5], [1.0], 9, 9))
  assert list(zip(*np.nonzero(zoomed_in[0, ..., 0] > 0.5))) == [(4, 8)]
  shifted = _apply(image, augment.shift_matrix([-1.0], [2.0]))
  assert list(zip(*np.nonzero(shifted[0, ..., 0] > 0.5))) == [(6, 5)]


def test_identity_config_and_identity_transform_leave_images_unchanged():
  images = _cifar_batch()
  assert not augment.AugmentConfig.none().enabled
  assert augment.augment_batch(images, augment.AugmentConfig.none(), seed=[1, 2]) is images
  # The resampling path itself is exact at integer positions (uint8 round trip).
  identity = augment.compose(*[augment.rotation_matrix([0.0] * 8, 32, 32),
                               augment.zoom_matrix([1.0] * 8, [1.0] * 8, 32, 32)])
  np.testing.assert_array_equal(_apply(images, identity), images)


def test_flip_is_exact_and_happens_about_half_the_time():
  images = _cifar_batch()
  images = np.concatenate([images, images])  # 16 images
  flip_only = augment.AugmentConfig(flip=True, rotation_deg=0, zoom=0, width_shift=0,
                                    height_shift=0)
  out = augment.augment_batch(images, flip_only, seed=[3, 4]).numpy()
  flipped = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images)]
  kept = [np.array_equal(o, i) for o, i in zip(out, images)]
  assert all(f or k for f, k in zip(flipped, kept))
  assert 0 < sum(flipped) < len(images)  # P(all the same) = 2**-15


def test_draws_stay_in_the_configured_ranges_per_axis():
  n = 512
  def params(**kw):
    cfg = augment.AugmentConfig(**{"flip": False, "rotation_deg": 0, "zoom": 0,
                                   "width_shift": 0, "height_shift": 0, **kw})
    return augment.random_transforms(n, 40, 20, cfg, seed=[5, 6]).numpy()

  p = params(rotation_deg=15)
  angles = np.degrees(np.arctan2(p[:, 3], p[:, 0]))
  assert angles.min() >= -15.001 and angles.max() <= 15.001 and angles.std() > 5
  # Different fractions per axis on a 40 x 20 (H x W) image: a swap would show.
  p = params(width_shift=0.2, height_shift=0.05)
  dx, dy = -p[:, 2], -p[:, 5]  # pixels the content moves
  assert np.abs(dx).max() <= 0.2 * 20 + 1e-4 and np.abs(dx).max() > 0.15 * 20
  assert np.abs(dy).max() <= 0.05 * 40 + 1e-4 and np.abs(dy).max() > 0.04 * 40
  p = params(zoom=0.1)
  assert 0.9 - 1e-6 <= p[:, [0, 4]].min() and p[:, [0, 4]].max() <= 1.1 + 1e-6
  assert np.corrcoef(p[:, 0], p[:, 4])[0, 1] < 0.2  # zx and zy are independent draws
  p = params(flip=True)
  assert set(np.round(p[:, 0]).tolist()) == {-1.0, 1.0}


def test_same_seed_same_output_other_seed_other_output_and_dtype_kept():
  images = _cifar_batch()
  a = augment.augment_batch(images, REPORT, seed=[7, 8])
  b = augment.augment_batch(images, REPORT, seed=[7, 8])
  c = augment.augment_batch(images, REPORT, seed=[7, 9])
  assert a.dtype == tf.uint8 and a.shape == images.shape
  np.testing.assert_array_equal(a.numpy(), b.numpy())
  assert not np.array_equal(a.numpy(), c.numpy())
  floats = augment.augment_batch(images.astype(np.float32), REPORT, seed=[7, 8])
  assert floats.dtype == tf.float32
  # uint8 output is the float result rounded.
  np.testing.assert_array_equal(np.round(floats.numpy()).astype(np.uint8), a.numpy())
  halves = augment.augment_batch(tf.cast(images, tf.float16), REPORT, seed=[7, 8])
  assert halves.dtype == tf.float16
  # Unseeded calls draw fresh transforms each time.
  d = augment.augment_batch(images, REPORT)
  e = augment.augment_batch(images, REPORT)
  assert not np.array_equal(d.numpy(), e.numpy())


def test_same_result_eagerly_in_tf_function_and_in_tf_data_with_labels_untouched():
  images = _cifar_batch()
  labels = np.arange(len(images), dtype=np.int32)
  seed = tf.constant([11, 12], tf.int64)
  eager = augment.augment_batch(images, REPORT, seed=seed).numpy()

  @tf.function(jit_compile=False)
  def step(x, s):
    return augment.augment_batch(x, REPORT, seed=s)

  np.testing.assert_array_equal(step(images, seed).numpy(), eager)
  ds = tf.data.Dataset.from_tensors((images, labels)).map(
      lambda x, y: (augment.augment_batch(x, REPORT, seed=seed), y))
  (out_images, out_labels), = list(ds.as_numpy_iterator())
  np.testing.assert_array_equal(out_images, eager)
  np.testing.assert_array_equal(out_labels, labels)
  assert not np.array_equal(out_images, images)


def test_unknown_static_shape_inside_tf_data():
  images = _cifar_batch(4)
  ds = tf.data.Dataset.from_generator(
      lambda: iter([images]), output_signature=tf.TensorSpec([None, None, None, 3], tf.uint8))
  out = next(iter(ds.map(lambda x: augment.augment_batch(x, REPORT, seed=[1, 1]))))
  assert out.shape == images.shape and out.dtype == tf.uint8


@pytest.mark.parametrize("kwargs", [dict(rotation_deg=-1), dict(zoom=1.0),
                                    dict(width_shift=1.5), dict(height_shift=-0.1),
                                    dict(resampler="scipy")])
def test_config_rejects_out_of_range_values(kwargs):
  with pytest.raises(ValueError):
    augment.AugmentConfig(**kwargs)
