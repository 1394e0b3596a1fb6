"""RandAugment in JAX, on the accelerator: timm's "increasing" op set, pixel for pixel what PIL
computes for timm (written after PIL's C code; tests/test_augment_parity.py compares every op
with timm's, jitted and vmapped). It replaces the tf.data version the host ran before issue #27.

The ops take and return one uint8 [H, W, 3] image of a fixed shape, so they vmap over a batch
inside the jitted train step. PIL computes the geometric ops' coordinates and the level-to-argument
maps in double precision, and truncates its results, so a last-bit difference moves whole levels:
`randaugment` traces those in float64 (`jax.enable_x64` around the ops only), whatever the
process's x64 setting.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

# timm's magnitude scale: a level of 10 is the op's strongest setting.
LEVEL_MAX = 10.0
OP_NAMES = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
            "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
            "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")


def _rounded(x):
  """The product `x`, rounded on its own as in PIL's C: a select between it and the addition that
  follows keeps the compiler from contracting both into a fused multiply-add, which rounds once
  (PIL truncates its results, so a last-bit change moves whole levels)."""
  return jnp.where(jnp.isnan(x), jnp.zeros_like(x), x)


def _divide(x, y: float):
  """x / y, divided: XLA turns a division by a constant (even one behind an optimization barrier)
  into a multiplication by its reciprocal, which is off in the last bit for some values (3.7 / 10
  gives 0.37000000000000005); a divisor that depends on x cannot be folded."""
  return x / jnp.where(jnp.isnan(x), jnp.ones_like(x), jnp.full_like(x, y))


def _blend(degenerate, img, factor):
  """PIL's Image.blend (ImageEnhance): degenerate + factor * (img - degenerate) in float32, truncated."""
  d = degenerate.astype(jnp.float32)
  out = d + _rounded(jnp.asarray(factor, jnp.float32) * (img.astype(jnp.float32) - d))
  return jnp.floor(jnp.clip(out, 0.0, 255.0)).astype(jnp.uint8)


def _gray(img):
  """PIL's 'L' conversion in its fixed point (ITU-R 601-2 luma, L24), int32 [H, W, 1]."""
  x = img.astype(jnp.int32)
  luma = x[..., :1] * 19595 + x[..., 1:2] * 38470 + x[..., 2:] * 7471 + 0x8000
  return jnp.right_shift(luma, 16)


def auto_contrast(img, values=None):
  """PIL ImageOps.autocontrast: each channel's [lo, hi] stretched to [0, 255] (one-valued channels
  stay). With `values` [h, w, 3]: those mapped by the image's table (its lookup table itself, for
  values 0..255)."""
  x = jnp.asarray(img if values is None else values).astype(jnp.float64)
  lo = jnp.min(img, axis=(0, 1), keepdims=True).astype(jnp.float64)
  hi = jnp.max(img, axis=(0, 1), keepdims=True).astype(jnp.float64)
  scale = jnp.where(hi > lo, 255.0 / jnp.maximum(hi - lo, 1.0), 1.0)
  offset = jnp.where(hi > lo, -lo * scale, 0.0)
  # The product rounded on its own, as in PIL's C (XLA would otherwise fuse it into an FMA).
  return jnp.clip(jnp.floor(_rounded(x * scale) + offset), 0.0, 255.0).astype(jnp.uint8)


def equalize(img, values=None):
  """PIL ImageOps.equalize per channel: maps the cumulative histogram onto [0, 255]. With
  `values` [h, w, 3]: those mapped by the image's table."""
  values = img if values is None else values

  def channel(c, v):
    hist = jnp.zeros((256,), jnp.int32).at[c.reshape(-1).astype(jnp.int32)].add(1)
    last = hist[jnp.max(jnp.where(hist > 0, jnp.arange(256), 0))]
    step = (jnp.sum(hist) - last) // 255
    lut = jnp.clip((jnp.cumsum(hist) - hist + step // 2) // jnp.maximum(step, 1), 0, 255)
    v = v.astype(jnp.int32)
    return jnp.where(step > 0, lut[v], v)
  return jnp.stack([channel(img[..., i], values[..., i]) for i in range(3)], axis=-1).astype(jnp.uint8)


def invert(img):
  return 255 - img


def posterize(img, bits):
  """Keeps the `bits` most significant bits (0 bits: black, as PIL before 11.3)."""
  mask = 256 - jnp.left_shift(1, 8 - jnp.asarray(bits, jnp.int32))
  return jnp.bitwise_and(img.astype(jnp.int32), mask).astype(jnp.uint8)


def solarize(img, threshold):
  """Inverts pixels >= threshold (threshold 256: unchanged)."""
  x = img.astype(jnp.int32)
  return jnp.where(x >= threshold, 255 - x, x).astype(jnp.uint8)


def solarize_add(img, add, threshold: int = 128):
  """Adds `add` to pixels below `threshold`, saturating at 255."""
  x = img.astype(jnp.int32)
  return jnp.where(x < threshold, jnp.minimum(x + add, 255), x).astype(jnp.uint8)


def _color_degenerate(img):
  return jnp.broadcast_to(_gray(img), img.shape).astype(jnp.float32)


def _contrast_degenerate(img):
  gray = _gray(img)
  mean = _divide(jnp.sum(gray).astype(jnp.float64), gray.size)
  return jnp.full(img.shape, jnp.floor(mean + 0.5).astype(jnp.float32))


def _brightness_degenerate(img):
  return jnp.zeros(img.shape, jnp.float32)


def color(img, factor):
  """Saturation: blends with the grayscale image (factor 0: gray, 1: unchanged)."""
  return _blend(_color_degenerate(img), img, factor)


def contrast(img, factor):
  """Blends with the mean gray level, int(mean + 0.5) as PIL's ImageStat (factor 0: flat gray)."""
  return _blend(_contrast_degenerate(img), img, factor)


def brightness(img, factor):
  """Blends with black (factor 0: black, 1: unchanged)."""
  return _blend(_brightness_degenerate(img), img, factor)


def sharpness(img, factor):
  """Blends with PIL's SMOOTH-filtered image (border pixels kept), as ImageEnhance.Sharpness."""
  return _blend(_sharpness_degenerate(img), img, factor)


def _sharpness_degenerate(img):
  x = jnp.asarray(img, jnp.float32)
  # PIL's 3x3 filter in its order and precision: float32 weights 1/13 and 5/13, the row below
  # first, summed onto the rounding offset 0.5, then truncated.
  k, k5 = jnp.float32(1.0 / 13.0), jnp.float32(5.0 / 13.0)

  def row(r, centre):
    return _rounded(r[:, :-2] * k) + _rounded(r[:, 1:-1] * centre) + _rounded(r[:, 2:] * k)

  ss = 0.5 + row(x[2:], k)
  ss = ss + row(x[1:-1], k5)
  ss = ss + row(x[:-2], k)
  smooth = jnp.floor(jnp.clip(ss, 0.0, 255.0))
  return x.at[1:-1, 1:-1].set(smooth)


def _cubic(p0, p1, p2, p3, d):
  """PIL's transform bicubic (a = -1), with its operation order."""
  q2 = -p0 + p2
  q3 = _rounded(2.0 * (p0 - p1)) + p2 - p3
  q4 = -p0 + p1 - p2 + p3
  return p1 + _rounded(d * (q2 + _rounded(d * (q3 + _rounded(d * q4)))))


def affine(img, matrix, fill: Sequence[int], interpolation: str = "bicubic"):
  """PIL's Image.transform(AFFINE, matrix, resample, fillcolor=fill), matrix = [a, b, c, d, e, f]:
  output (x, y) samples input (a x + b y + c, d x + e y + f) at pixel centres, in double precision;
  a source outside the image gets `fill`, inside the 4 x 4 (bicubic, a = -1) or 2 x 2 (bilinear)
  neighbourhood with edge pixels repeated, clipped to [0, 255] and truncated."""
  if interpolation not in ("bicubic", "bilinear"):
    raise ValueError(f"interpolation must be 'bicubic' or 'bilinear', got {interpolation!r}")
  h, w = img.shape[0], img.shape[1]
  a, b, c, d, e, f = (matrix[i].astype(jnp.float64) for i in range(6))
  ys = jnp.arange(h, dtype=jnp.float64)[:, None] + 0.5
  xs = jnp.arange(w, dtype=jnp.float64)[None, :] + 0.5
  # PIL's order and roundings (a x + b y) + c, - 0.5 after the sum.
  xin = _rounded(_rounded(_rounded(a * xs) + _rounded(b * ys)) + c)
  yin = _rounded(_rounded(_rounded(d * xs) + _rounded(e * ys)) + f)
  inside = (xin >= 0.0) & (xin < w) & (yin >= 0.0) & (yin < h)
  xin = jnp.where(inside, xin - 0.5, 0.0)
  yin = jnp.where(inside, yin - 0.5, 0.0)
  x0, y0 = jnp.floor(xin), jnp.floor(yin)
  dx, dy = (xin - x0)[..., None], (yin - y0)[..., None]
  x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
  taps = range(-1, 3) if interpolation == "bicubic" else range(2)
  cols = [jnp.clip(x0 + t, 0, w - 1) for t in taps]
  rows = [jnp.clip(y0 + t, 0, h - 1) * w for t in taps]
  flat = img.reshape(-1, 3).astype(jnp.float64)

  def pixel(r, col):
    return flat[r + col]

  if interpolation == "bicubic":
    v = _cubic(*[_cubic(*[pixel(r, col) for col in cols], dx) for r in rows], dy)
  else:
    lines = [pixel(r, cols[0]) + _rounded((pixel(r, cols[1]) - pixel(r, cols[0])) * dx) for r in rows]
    v = lines[0] + _rounded((lines[1] - lines[0]) * dy)
  v = jnp.floor(jnp.clip(v, 0.0, 255.0))
  return jnp.where(inside[..., None], v, jnp.asarray(fill, jnp.float64)).astype(jnp.uint8)


def rotate_matrix(shape, degrees):
  """PIL Image.rotate's (no expand) affine matrix: counter-clockwise by `degrees` about the centre."""
  cy, cx = shape[0] / 2.0, shape[1] / 2.0
  a = -jnp.mod(jnp.asarray(degrees, jnp.float64), 360.0) * (math.pi / 180.0)
  cos, sin = (_divide(jnp.round(v * 1e15), 1e15) for v in (jnp.cos(a), jnp.sin(a)))  # PIL: 15 decimals
  c = (_rounded(cos * -cx) + _rounded(sin * -cy)) + cx
  f = (_rounded(-sin * -cx) + _rounded(cos * -cy)) + cy
  return jnp.stack([cos, sin, c, -sin, cos, f])


def _matrix(*entries):
  return jnp.stack([jnp.asarray(v, jnp.float64) for v in entries])


def rotate(img, degrees, fill, interpolation="bicubic"):
  """Rotates counter-clockwise by `degrees` about the image centre (PIL Image.rotate, no expand)."""
  return affine(img, rotate_matrix(img.shape, degrees), fill, interpolation)


def shear_x(img, factor, fill, interpolation="bicubic"):
  return affine(img, _matrix(1.0, factor, 0.0, 0.0, 1.0, 0.0), fill, interpolation)


def shear_y(img, factor, fill, interpolation="bicubic"):
  return affine(img, _matrix(1.0, 0.0, 0.0, factor, 1.0, 0.0), fill, interpolation)


def translate_x(img, pixels, fill, interpolation="bicubic"):
  return affine(img, _matrix(1.0, 0.0, pixels, 0.0, 1.0, 0.0), fill, interpolation)


def translate_y(img, pixels, fill, interpolation="bicubic"):
  return affine(img, _matrix(1.0, 0.0, 0.0, 0.0, 1.0, pixels), fill, interpolation)


def _m(level):
  return _divide(jnp.asarray(level, jnp.float64), LEVEL_MAX)


def _signed(level, sign, scale):
  return jnp.asarray(sign, jnp.float64) * _rounded(_m(level) * scale)


def _enhance_factor(level, sign):
  return jnp.maximum(1.0 + _rounded(_signed(level, sign, 0.9)), 0.1)


def _affine_matrices(shape, level, sign):
  """The matrices of Rotate, ShearX, ShearY, TranslateXRel, TranslateYRel (timm's arguments)."""
  shear, rel = _signed(level, sign, 0.3), _signed(level, sign, 0.45)
  return [rotate_matrix(shape, _signed(level, sign, 30.0)),
          _matrix(1.0, shear, 0.0, 0.0, 1.0, 0.0), _matrix(1.0, 0.0, 0.0, shear, 1.0, 0.0),
          _matrix(1.0, 0.0, _rounded(rel * shape[1]), 0.0, 1.0, 0.0),
          _matrix(1.0, 0.0, 0.0, 0.0, 1.0, _rounded(rel * shape[0]))]


def randaugment_ops(fill: Sequence[int], interpolation: str = "bicubic") -> dict[str, Callable]:
  """timm's `_RAND_INCREASING_TRANSFORMS`, each f(img, level, sign), level in [0, 10] (float64) and
  sign +-1, with timm's level-to-argument maps in double precision: with m = level / 10, Rotate
  +-30 m degrees, Shear +-0.3 m, TranslateRel +-0.45 m of the side, enhance factors max(0.1,
  1 +- 0.9 m), PosterizeIncreasing keeps 4 - int(4 m) bits, SolarizeIncreasing thresholds at
  256 - min(256, int(256 m)), SolarizeAdd adds min(128, int(110 m)). Call them with x64 enabled
  (`randaugment` does)."""
  def to_int(v):
    return jnp.floor(v).astype(jnp.int32)

  def geometric(i):
    return lambda img, level, sign: affine(img, _affine_matrices(img.shape, level, sign)[i], fill, interpolation)

  def enhance(fn):
    return lambda img, level, sign: fn(img, _enhance_factor(level, sign))

  ops = {
      "AutoContrast": lambda img, level, sign: auto_contrast(img),
      "Equalize": lambda img, level, sign: equalize(img),
      "Invert": lambda img, level, sign: invert(img),
      "Rotate": geometric(0),
      "PosterizeIncreasing": lambda img, level, sign: posterize(img, 4 - to_int(_m(level) * 4.0)),
      "SolarizeIncreasing": lambda img, level, sign: solarize(img, 256 - jnp.minimum(256, to_int(_m(level) * 256.0))),
      "SolarizeAdd": lambda img, level, sign: solarize_add(img, jnp.minimum(128, to_int(_m(level) * 110.0))),
      "ColorIncreasing": enhance(color),
      "ContrastIncreasing": enhance(contrast),
      "BrightnessIncreasing": enhance(brightness),
      "SharpnessIncreasing": enhance(sharpness),
      "ShearX": geometric(1),
      "ShearY": geometric(2),
      "TranslateXRel": geometric(3),
      "TranslateYRel": geometric(4),
  }
  assert tuple(ops) == OP_NAMES
  return ops


# The ops by kind. Under vmap (a batch) every branch of a switch runs for every image, so a layer
# runs each kind once, with the chosen op's arguments and identities for the others: a per-channel
# lookup table, an affine resampling (exact at identity: pixel centres sample themselves), and a
# blend with a degenerate image (factor 1: the image itself). Index -1 is the skipped layer.
_TABLE_OPS = ("AutoContrast", "Equalize", "Invert", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd")
_AFFINE_OPS = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
_BLEND_OPS = ("ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing")


def _select(index, names, candidates, default):
  """candidates[i] where OP_NAMES[index] == names[i], else `default`."""
  codes = jnp.asarray([OP_NAMES.index(n) for n in names], jnp.int32)
  # The position of the match as a sum, not argmax: argmax traced under a local enable_x64 inside
  # a function traced without it lowers to mismatched index types.
  position = jnp.sum(jnp.where(codes == index, jnp.arange(len(names), dtype=jnp.int32), 0))
  return jnp.where(jnp.any(codes == index), jnp.stack(candidates)[position], default)


def _tables(img, level, sign):
  """The table ops' per-channel lookup tables [256, 3] for this image, in _TABLE_OPS' order."""
  values = jnp.broadcast_to(jnp.arange(256, dtype=jnp.uint8)[:, None, None], (256, 1, 3))
  ops = randaugment_ops((0, 0, 0))
  return [auto_contrast(img, values), equalize(img, values)] + [
      ops[name](values, level, sign) for name in _TABLE_OPS[2:]]


def _layer(img, index, level, sign, fill, interpolation):
  """The op OP_NAMES[index] (index -1: none) on one image: one table, one affine, one blend."""
  identity = jnp.broadcast_to(jnp.arange(256, dtype=jnp.uint8)[:, None, None], (256, 1, 3))
  table = _select(index, _TABLE_OPS, _tables(img, level, sign), identity)[:, 0]
  img = jnp.take_along_axis(table, img.reshape(-1, 3).astype(jnp.int32), axis=0).reshape(img.shape)
  matrix = _select(index, _AFFINE_OPS, _affine_matrices(img.shape, level, sign),
                   jnp.asarray([1.0, 0.0, 0.0, 0.0, 1.0, 0.0], jnp.float64))
  img = affine(img, matrix, fill, interpolation)
  degenerates = [_color_degenerate(img), _contrast_degenerate(img), _brightness_degenerate(img),
                 _sharpness_degenerate(img)]
  degenerate = _select(index, _BLEND_OPS, degenerates, img.astype(jnp.float32))
  factor = jnp.where(jnp.isin(index, jnp.asarray([OP_NAMES.index(n) for n in _BLEND_OPS])),
                     _enhance_factor(level, sign), 1.0)
  return _blend(degenerate, img, factor)


def randaugment(img, key, num_ops: int, magnitude: float, magnitude_std: float, fill: Sequence[int],
                prob: float = 0.5, interpolation: str = "bicubic"):
  """RandAugment (timm semantics) on one uint8 [H, W, 3] image: `num_ops` layers, each a uniformly
  chosen op applied with probability `prob` at a level N(magnitude, magnitude_std) clipped to [0, 10]."""
  with jax.enable_x64(True):
    for layer_key in jax.random.split(key, num_ops):
      k_op, k_apply, k_mag, k_sign = jax.random.split(layer_key, 4)
      index = jax.random.randint(k_op, (), 0, len(OP_NAMES), dtype=jnp.int32)
      level = magnitude + magnitude_std * jax.random.normal(k_mag, (), jnp.float32)
      level = jnp.clip(level, 0.0, LEVEL_MAX).astype(jnp.float64)
      sign = jnp.where(jax.random.uniform(k_sign, (), jnp.float32) < 0.5, -1.0, 1.0)
      apply = jax.random.uniform(k_apply, (), jnp.float32) < prob
      img = _layer(img, jnp.where(apply, index, -1), level, sign, fill, interpolation)
  return img
