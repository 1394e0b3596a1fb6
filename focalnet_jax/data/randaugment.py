"""RandAugment in TensorFlow, timm's "increasing" op set, pixel for pixel what PIL computes for timm.

Each of `num_ops` layers picks one of the 15 ops (`_RAND_INCREASING_TRANSFORMS` in timm)
uniformly, with replacement, and applies it with probability 0.5 at a magnitude drawn from
N(magnitude, magnitude_std) clipped to [0, LEVEL_MAX]. The ops take and return uint8 [H, W, 3]:
the enhance ops blend in float32 and truncate as PIL does, the geometric ops resample with PIL's
own bicubic (or bilinear) transform written out in TensorFlow and fill with the dataset mean
colour, as timm does (tests/test_augment_parity.py checks every op against timm's). Imports
TensorFlow.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import tensorflow as tf

from focalnet_jax.data.tf_random import split, uniform

# timm's magnitude scale: a level of 10 is the op's strongest setting.
LEVEL_MAX = 10.0

# ----------------------------------------------------------------------------------------
# RandAugment ops: uint8 [H, W, 3] -> uint8 [H, W, 3], each PIL's arithmetic as timm calls it
# (checked pixel for pixel against timm's ops in tests/test_augment_parity.py).


def _divide(x: tf.Tensor, y) -> tf.Tensor:
  """x / y rounded as Python and C round it, also inside tf.function and tf.data graphs.

  Grappler rewrites a division by a constant into a multiplication by its reciprocal, which is off
  by one in the last bit for some values (3.7 / 10); PIL truncates its results, so that moves
  whole levels. It leaves DivNoNan alone, which divides exactly (y is never 0 here).
  """
  y = tf.cast(y, x.dtype) if tf.is_tensor(y) else tf.constant(y, x.dtype)  # tf.cast(1e15) goes via float32
  return tf.math.divide_no_nan(x, y)


def _as_computed(x: tf.Tensor) -> tf.Tensor:
  """`x`, kept as computed inside tf.function and tf.data graphs.

  Grappler regroups sums and products (a x + b y + c as (a x + c) + b y, to broadcast less;
  (x c1) c2 as x (c1 c2)), which rounds differently; PIL truncates its results, so a last-bit
  change moves whole levels. It cannot see through a select on a condition known only at run time.
  """
  return tf.where(tf.math.is_nan(x), tf.zeros_like(x), x)


def _blend(degenerate: tf.Tensor, img: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """PIL's Image.blend (ImageEnhance): degenerate + factor * (img - degenerate) in float32, truncated.

  PIL computes in single precision and truncates towards zero (clipping first when the factor
  extrapolates); rounding instead moves a third to a half of the pixels up by one level.
  """
  d = tf.cast(degenerate, tf.float32)
  out = d + tf.cast(factor, tf.float32) * (tf.cast(img, tf.float32) - d)
  return tf.cast(tf.floor(tf.clip_by_value(out, 0.0, 255.0)), tf.uint8)


def _gray(img: tf.Tensor) -> tf.Tensor:
  """PIL's 'L' conversion in its fixed point (ITU-R 601-2 luma, L24), int32 [H, W, 1]."""
  x = tf.cast(img, tf.int32)
  luma = x[..., :1] * 19595 + x[..., 1:2] * 38470 + x[..., 2:] * 7471 + 0x8000
  return tf.bitwise.right_shift(luma, 16)


def auto_contrast(img: tf.Tensor) -> tf.Tensor:
  """PIL ImageOps.autocontrast: each channel's [lo, hi] stretched to [0, 255] (one-valued channels stay)."""
  x = tf.cast(img, tf.float64)
  lo = tf.reduce_min(x, axis=[0, 1], keepdims=True)
  hi = tf.reduce_max(x, axis=[0, 1], keepdims=True)
  # PIL's lookup table, in double precision: int(ix * scale + offset), offset = -lo * scale.
  scale = tf.where(hi > lo, 255.0 / tf.maximum(hi - lo, 1.0), 1.0)
  offset = tf.where(hi > lo, -lo * scale, 0.0)
  return tf.cast(tf.clip_by_value(tf.floor(x * scale + offset), 0.0, 255.0), tf.uint8)


def equalize(img: tf.Tensor) -> tf.Tensor:
  """PIL ImageOps.equalize per channel: maps the cumulative histogram onto [0, 255]."""
  def channel(c):
    c = tf.cast(c, tf.int32)
    hist = tf.math.bincount(c, minlength=256, maxlength=256, dtype=tf.int32)
    last = tf.gather(hist, tf.reduce_max(tf.where(hist > 0)[:, 0]))
    step = (tf.reduce_sum(hist) - last) // 255
    lut = (tf.cumsum(hist, exclusive=True) + step // 2) // tf.maximum(step, 1)
    lut = tf.clip_by_value(lut, 0, 255)
    return tf.where(step > 0, tf.gather(lut, c), c)
  out = tf.stack([channel(img[..., i]) for i in range(3)], axis=-1)
  return tf.cast(out, tf.uint8)


def invert(img: tf.Tensor) -> tf.Tensor:
  return 255 - img


def posterize(img: tf.Tensor, bits: tf.Tensor) -> tf.Tensor:
  """Keeps the `bits` most significant bits (0 bits: black).

  0 bits is timm's PosterizeIncreasing at level 10; PIL before 11.3 gave black, newer PIL
  refuses it with a ValueError. Black is kept here.
  """
  # A mask in int32: shifting a uint8 by 8 (bits = 0) is undefined.
  mask = 256 - tf.bitwise.left_shift(1, 8 - tf.cast(bits, tf.int32))
  return tf.cast(tf.bitwise.bitwise_and(tf.cast(img, tf.int32), mask), tf.uint8)


def solarize(img: tf.Tensor, threshold: tf.Tensor) -> tf.Tensor:
  """Inverts pixels >= threshold (threshold 256: unchanged)."""
  x = tf.cast(img, tf.int32)
  return tf.cast(tf.where(x >= threshold, 255 - x, x), tf.uint8)


def solarize_add(img: tf.Tensor, add: tf.Tensor, threshold: int = 128) -> tf.Tensor:
  """Adds `add` to pixels below `threshold`, saturating at 255."""
  x = tf.cast(img, tf.int32)
  return tf.cast(tf.where(x < threshold, tf.minimum(x + add, 255), x), tf.uint8)


def color(img: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """Saturation: blends with the grayscale image (factor 0: gray, 1: unchanged)."""
  return _blend(tf.tile(_gray(img), [1, 1, 3]), img, factor)


def contrast(img: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """Blends with the mean gray level, int(mean + 0.5) as PIL's ImageStat (factor 0: flat gray)."""
  gray = _gray(img)
  mean = _divide(tf.cast(tf.reduce_sum(gray), tf.float64), tf.cast(tf.size(gray), tf.float64))
  mean = tf.cast(tf.floor(mean + 0.5), tf.float32)
  return _blend(tf.fill(tf.shape(img), mean), img, factor)


def brightness(img: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """Blends with black (factor 0: black, 1: unchanged)."""
  return _blend(tf.zeros_like(img), img, factor)


def sharpness(img: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """Blends with PIL's SMOOTH-filtered image (border pixels kept), as ImageEnhance.Sharpness."""
  x = tf.cast(img, tf.float32)
  # PIL's 3x3 filter in its order and precision: float32 weights 1/13 and 5/13, the row below
  # first, summed onto the rounding offset 0.5, then truncated.
  k = tf.constant(1.0 / 13.0, tf.float32)
  k5 = tf.constant(5.0 / 13.0, tf.float32)

  def row(r, centre):
    return r[:, :-2] * k + r[:, 1:-1] * centre + r[:, 2:] * k

  ss = 0.5 + row(x[2:], k)
  ss = ss + row(x[1:-1], k5)
  ss = ss + row(x[:-2], k)
  smooth = tf.floor(tf.clip_by_value(ss, 0.0, 255.0))
  padded = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
  inner = tf.pad(tf.ones_like(smooth[..., :1]), [[1, 1], [1, 1], [0, 0]]) > 0
  degenerate = tf.where(inner, padded, x)
  return _blend(degenerate, img, factor)


def _cubic(p0, p1, p2, p3, d):
  """PIL's transform bicubic (a = -1), with its operation order."""
  q2 = -p0 + p2
  q3 = 2.0 * (p0 - p1) + p2 - p3
  q4 = -p0 + p1 - p2 + p3
  return p1 + d * (q2 + d * (q3 + d * q4))


def affine(img: tf.Tensor, matrix: tf.Tensor, fill: Sequence[int],
           interpolation: str = "bicubic") -> tf.Tensor:
  """PIL's Image.transform(AFFINE, matrix, resample, fillcolor=fill): output (x, y) samples input
  (a x + b y + c, d x + e y + f) at pixel centres, with `matrix` = [a, b, c, d, e, f].

  PIL's generic transform exactly, in double precision: an output pixel whose source lies
  outside the image gets `fill`; inside, the 4 x 4 (bicubic, PIL's a = -1 kernel) or 2 x 2
  (bilinear) neighbourhood with edge pixels repeated, clipped to [0, 255] and truncated.
  """
  if interpolation not in ("bicubic", "bilinear"):
    raise ValueError(f"interpolation must be 'bicubic' or 'bilinear', got {interpolation!r}")
  shape = tf.shape(img)
  h, w = shape[0], shape[1]
  a, b, c, d, e, f = tf.unstack(tf.cast(matrix, tf.float64))
  ys = tf.cast(tf.range(h), tf.float64)[:, None] + 0.5
  xs = tf.cast(tf.range(w), tf.float64)[None, :] + 0.5
  # PIL's order, (a x + b y) + c, kept in graphs too.
  xin = _as_computed(_as_computed(a * xs + b * ys) + c)
  yin = _as_computed(_as_computed(d * xs + e * ys) + f)
  inside = ((xin >= 0.0) & (xin < tf.cast(w, tf.float64)) & (yin >= 0.0) & (yin < tf.cast(h, tf.float64)))
  # Outside pixels sample the centre pixel, then are replaced by the fill colour.
  xin = tf.where(inside, xin - 0.5, 0.0)
  yin = tf.where(inside, yin - 0.5, 0.0)
  x0, y0 = tf.floor(xin), tf.floor(yin)
  dx, dy = (xin - x0)[..., None], (yin - y0)[..., None]
  x0, y0 = tf.cast(x0, tf.int32), tf.cast(y0, tf.int32)
  taps = range(-1, 3) if interpolation == "bicubic" else range(2)
  cols = [tf.clip_by_value(x0 + t, 0, w - 1) for t in taps]
  rows = [tf.clip_by_value(y0 + t, 0, h - 1) * w for t in taps]
  flat = tf.reshape(tf.cast(img, tf.float64), [-1, 3])

  def pixel(r, col):
    return tf.gather(flat, r + col)

  if interpolation == "bicubic":
    lines = [_cubic(*[pixel(r, col) for col in cols], dx) for r in rows]
    v = _cubic(*lines, dy)
  else:
    lines = []
    for r in rows:
      p0, p1 = pixel(r, cols[0]), pixel(r, cols[1])
      lines.append(p0 + (p1 - p0) * dx)
    v = lines[0] + (lines[1] - lines[0]) * dy
  v = tf.floor(tf.clip_by_value(v, 0.0, 255.0))
  out = tf.where(inside[..., None], v, tf.constant(fill, tf.float64))
  return tf.cast(out, tf.uint8)


def rotate(img: tf.Tensor, degrees: tf.Tensor, fill: Sequence[int],
           interpolation: str = "bicubic") -> tf.Tensor:
  """Rotates counter-clockwise by `degrees` about the image centre (PIL Image.rotate, no expand)."""
  shape = tf.cast(tf.shape(img), tf.float64)
  cy, cx = shape[0] / 2.0, shape[1] / 2.0  # PIL's centre, in its pixel-centre coordinates
  a = -tf.math.floormod(tf.cast(degrees, tf.float64), 360.0) * (math.pi / 180.0)

  def r15(v):  # PIL rounds the matrix to 15 decimals (cos 90 degrees becomes exactly 0).
    return _divide(tf.round(v * 1e15), 1e15)

  cos, sin = r15(tf.cos(a)), r15(tf.sin(a))
  # PIL: input = R (output - centre) + centre, as (a x + b y + c) with c = a (-cx) + b (-cy) + cx.
  c = _as_computed(cos * -cx + sin * -cy) + cx
  f = _as_computed(-sin * -cx + cos * -cy) + cy
  matrix = tf.stack([cos, sin, c, -sin, cos, f])
  return affine(img, matrix, fill, interpolation)


def shear_x(img, factor, fill, interpolation="bicubic"):
  factor = tf.cast(factor, tf.float64)
  return affine(img, tf.stack([1.0, factor, 0.0, 0.0, 1.0, 0.0]), fill, interpolation)


def shear_y(img, factor, fill, interpolation="bicubic"):
  factor = tf.cast(factor, tf.float64)
  return affine(img, tf.stack([1.0, 0.0, 0.0, factor, 1.0, 0.0]), fill, interpolation)


def translate_x(img, pixels, fill, interpolation="bicubic"):
  pixels = tf.cast(pixels, tf.float64)
  return affine(img, tf.stack([1.0, 0.0, pixels, 0.0, 1.0, 0.0]), fill, interpolation)


def translate_y(img, pixels, fill, interpolation="bicubic"):
  pixels = tf.cast(pixels, tf.float64)
  return affine(img, tf.stack([1.0, 0.0, 0.0, 0.0, 1.0, pixels]), fill, interpolation)


def randaugment_ops(fill: Sequence[int], interpolation: str = "bicubic") -> dict[str, Callable]:
  """timm's `_RAND_INCREASING_TRANSFORMS`, each as f(img, level, sign) with level in [0, 10].

  `sign` is +-1 (timm negates signed arguments with probability 0.5). The level-to-argument
  maps are timm's (`timm.data.auto_augment.LEVEL_TO_ARG`), in double precision as timm computes
  them: with m = level / 10, Rotate +-30 m degrees, Shear +-0.3 m, TranslateRel +-0.45 m of the
  side, enhance factors max(0.1, 1 +- 0.9 m), PosterizeIncreasing keeps 4 - int(4 m) bits,
  SolarizeIncreasing thresholds at 256 - min(256, int(256 m)), SolarizeAdd adds
  min(128, int(110 m)). Geometric ops resample with `interpolation` (timm passes its
  `interpolation` to RandAugment: bicubic in FocalNet's recipe).
  """
  def m(level):
    return _divide(tf.cast(level, tf.float64), LEVEL_MAX)

  def signed(level, sign, scale):
    return _as_computed(tf.cast(sign, tf.float64) * _as_computed(m(level) * scale))

  def enhance(fn):
    # The tensor first: a leading Python 0.1 becomes float32 in graph mode (tf.data), beside a float64.
    return lambda img, level, sign: fn(img, tf.maximum(1.0 + signed(level, sign, 0.9), 0.1))

  def geometric(fn, scale, side=None):
    def op(img, level, sign):
      arg = signed(level, sign, scale)
      if side is not None:
        arg = _as_computed(arg * tf.cast(tf.shape(img)[side], tf.float64))
      return fn(img, arg, fill, interpolation)
    return op

  def to_int(v):
    return tf.cast(tf.floor(v), tf.int32)  # Python's int() of a non-negative value

  return {
      "AutoContrast": lambda img, level, sign: auto_contrast(img),
      "Equalize": lambda img, level, sign: equalize(img),
      "Invert": lambda img, level, sign: invert(img),
      "Rotate": geometric(rotate, 30.0),
      "PosterizeIncreasing": lambda img, level, sign: posterize(img, 4 - to_int(m(level) * 4.0)),
      "SolarizeIncreasing": lambda img, level, sign: solarize(
          img, 256 - tf.minimum(256, to_int(m(level) * 256.0))),
      "SolarizeAdd": lambda img, level, sign: solarize_add(img, tf.minimum(128, to_int(m(level) * 110.0))),
      "ColorIncreasing": enhance(color),
      "ContrastIncreasing": enhance(contrast),
      "BrightnessIncreasing": enhance(brightness),
      "SharpnessIncreasing": enhance(sharpness),
      "ShearX": geometric(shear_x, 0.3),
      "ShearY": geometric(shear_y, 0.3),
      "TranslateXRel": geometric(translate_x, 0.45, side=1),
      "TranslateYRel": geometric(translate_y, 0.45, side=0),
  }


def randaugment(img: tf.Tensor, seed, num_ops: int, magnitude: float, magnitude_std: float,
                fill: Sequence[int], prob: float = 0.5, interpolation: str = "bicubic") -> tf.Tensor:
  """RandAugment (timm semantics): `num_ops` layers, each a uniformly chosen op applied with `prob`."""
  ops = list(randaugment_ops(fill, interpolation).values())
  for layer_seed in split(seed, num_ops) if num_ops > 0 else []:
    s_op, s_apply, s_mag, s_sign = split(layer_seed, 4)
    index = tf.random.stateless_uniform([], s_op, 0, len(ops), dtype=tf.int32)
    level = magnitude + magnitude_std * tf.random.stateless_normal([], s_mag)
    level = tf.clip_by_value(level, 0.0, LEVEL_MAX)
    sign = tf.where(uniform(s_sign) < 0.5, -1.0, 1.0)
    branches = [lambda op=op, img=img: op(img, level, sign) for op in ops]
    # tf.cond, not tf.where: skipped layers (half of them) cost nothing.
    img = tf.cond(uniform(s_apply) < prob, lambda: tf.switch_case(index, branches), lambda img=img: img)
    img.set_shape([None, None, 3])
  return img
