"""Train and eval image transforms in TensorFlow, stateless and seeded per example.

The train transform follows the official FocalNet recipe (timm's `create_transform` with
`rand-m9-mstd0.5-inc1`, `reprob=0.25`, `remode='pixel'`):

  random resized crop (scale, log-uniform ratio; timm's 10 tries then centre crop) -> bicubic
  resize -> horizontal flip -> RandAugment -> /255 -> normalise -> random erasing

RandAugment (`randaugment.py`) computes what PIL computes for timm, pixel for pixel.

Every function takes a stateless seed (an int32/int64 tensor of shape [2]), so a transformed
example depends only on (image, seed). This module imports TensorFlow; import it lazily.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import tensorflow as tf

from focalnet_jax.data.randaugment import randaugment
from focalnet_jax.data.tf_random import randint, split, uniform

# timm's random erasing: box area fraction and aspect range, tries per image.
_ERASE_AREA = (0.02, 1.0 / 3.0)
_ERASE_ASPECT = (0.3, 1.0 / 0.3)
_TRIES = 10


# ----------------------------------------------------------------------------------------
# Crops and resizes


def rrc_window(seed, height, width, scale: Sequence[float], ratio: Sequence[float]) -> tf.Tensor:
  """timm/torchvision RandomResizedCrop window [top, left, h, w] (int32) for an image of (height, width).

  Ten candidates (area uniform in `scale` of the image, aspect log-uniform in `ratio`); the
  first that fits wins; if none fits, the largest centre crop with aspect clamped into `ratio`.
  """
  s_area, s_ratio, s_top, s_left = split(seed, 4)
  # Sizes in double precision from the float32 draws, as timm computes them in Python.
  h_f, w_f = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
  area = h_f * w_f
  target = area * tf.cast(uniform(s_area, [_TRIES], scale[0], scale[1]), tf.float64)
  aspect = tf.exp(tf.cast(uniform(s_ratio, [_TRIES], math.log(ratio[0]), math.log(ratio[1])), tf.float64))
  cw = tf.cast(tf.round(tf.sqrt(target * aspect)), tf.int32)
  ch = tf.cast(tf.round(tf.sqrt(target / aspect)), tf.int32)
  fits = (cw > 0) & (ch > 0) & (cw <= width) & (ch <= height)
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
  any_fit = tf.reduce_any(fits)

  # Fallback: whole image, cropped to the nearest allowed aspect ratio.
  in_ratio = w_f / h_f
  fb_w = tf.where(in_ratio < ratio[0], width,
                  tf.where(in_ratio > ratio[1], tf.cast(tf.round(h_f * ratio[1]), tf.int32), width))
  fb_h = tf.where(in_ratio < ratio[0], tf.cast(tf.round(w_f / ratio[0]), tf.int32), height)
  h = tf.where(any_fit, ch[first], fb_h)
  w = tf.where(any_fit, cw[first], fb_w)
  top = tf.where(any_fit, randint(s_top, height - h), (height - h) // 2)
  left = tf.where(any_fit, randint(s_left, width - w), (width - w) // 2)
  return tf.stack([top, left, h, w])


def decode_and_crop(data: tf.Tensor, window_fn: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]) -> tf.Tensor:
  """Decodes encoded image bytes to uint8 RGB [h, w, 3], cropped to `window_fn(height, width)`.

  JPEGs decode only the crop window (much cheaper for large photos); other formats (PNG, GIF's
  first frame, BMP, WebP) decode fully, then crop. Grayscale and RGBA become RGB.
  """
  def jpeg():
    shape = tf.image.extract_jpeg_shape(data)
    win = window_fn(shape[0], shape[1])
    return tf.image.decode_and_crop_jpeg(data, win, channels=3)

  def other():
    img = tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)
    shape = tf.shape(img)
    win = window_fn(shape[0], shape[1])
    return img[win[0]:win[0] + win[2], win[1]:win[1] + win[3]]

  img = tf.cond(tf.io.is_jpeg(data), jpeg, other)
  img.set_shape([None, None, 3])
  return img


def decode(data: tf.Tensor) -> tf.Tensor:
  """Decodes encoded image bytes to uint8 RGB [h, w, 3] (any supported format).

  JPEGs are decoded with libjpeg's accurate integer DCT, as PIL (and so timm) does: TensorFlow's
  default fast DCT is off by about one intensity level on average, and up to seven.
  """
  def jpeg():
    return tf.image.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE")

  def other():
    return tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)

  img = tf.cond(tf.io.is_jpeg(data), jpeg, other)
  img.set_shape([None, None, 3])
  return img


def resize(img: tf.Tensor, size, method: str) -> tf.Tensor:
  """Resizes to `size` (h, w) with antialiasing (as PIL does) and rounds back to uint8."""
  if method not in ("bicubic", "bilinear"):
    raise ValueError(f"interpolation must be 'bicubic' or 'bilinear', got {method!r}")
  out = tf.image.resize(img, size, method=method, antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)


def eval_transform(data: tf.Tensor, image_size: int, crop_ratio: float, interpolation: str) -> tf.Tensor:
  """Decode, resize the shorter side to floor(image_size / crop_ratio), centre crop image_size: uint8."""
  img = decode(data)
  shape = tf.shape(img)
  # float64, as torchvision computes in Python: float32 truncates some long sides one pixel short.
  h, w = tf.cast(shape[0], tf.float64), tf.cast(shape[1], tf.float64)
  short = tf.constant(math.floor(image_size / crop_ratio), tf.float64)
  # torchvision's Resize(int): the shorter side becomes `short` (the width when the sides are
  # equal), the longer one is truncated (`focalnet_jax.data.eval_images.resized_shape`).
  new_h = tf.cast(tf.where(w <= h, tf.floor(short * h / w), short), tf.int32)
  new_w = tf.cast(tf.where(w <= h, short, tf.floor(short * w / h)), tf.int32)
  img = resize(img, tf.stack([new_h, new_w]), interpolation)
  # CenterCrop's offsets: Python's round, halves to even, as tf.round.
  top = tf.cast(tf.round(tf.cast(new_h - image_size, tf.float64) / 2.0), tf.int32)
  left = tf.cast(tf.round(tf.cast(new_w - image_size, tf.float64) / 2.0), tf.int32)
  img = img[top:top + image_size, left:left + image_size]
  img.set_shape([image_size, image_size, 3])
  return img


def normalize(img: tf.Tensor, mean: Sequence[float], std: Sequence[float]) -> tf.Tensor:
  """uint8 [0, 255] -> float32 (x / 255 - mean) / std."""
  x = tf.cast(img, tf.float32) / 255.0
  return (x - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def random_erase(x: tf.Tensor, seed, prob: float) -> tf.Tensor:
  """timm RandomErasing (mode 'pixel', one box) on a normalised float image [H, W, C].

  With probability `prob`, a box of area U(2%, 1/3) of the image and aspect log-uniform in
  (0.3, 1/0.3) (ten tries to fit strictly inside) is filled with per-pixel N(0, 1) noise.
  """
  s_apply, s_area, s_aspect, s_top, s_left, s_noise = split(seed, 6)
  shape = tf.shape(x)
  height, width = shape[0], shape[1]
  area = tf.cast(height * width, tf.float32)
  target = area * uniform(s_area, [_TRIES], *_ERASE_AREA)
  aspect = tf.exp(uniform(s_aspect, [_TRIES], math.log(_ERASE_ASPECT[0]), math.log(_ERASE_ASPECT[1])))
  hs = tf.cast(tf.round(tf.sqrt(target * aspect)), tf.int32)
  ws = tf.cast(tf.round(tf.sqrt(target / aspect)), tf.int32)
  fits = (ws < width) & (hs < height)
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
  do = (uniform(s_apply) < prob) & tf.reduce_any(fits)

  def erase():
    h, w = hs[first], ws[first]
    top, left = randint(s_top, height - h), randint(s_left, width - w)
    rows = tf.range(height)[:, None, None]
    cols = tf.range(width)[None, :, None]
    box = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
    noise = tf.random.stateless_normal(shape, s_noise, dtype=x.dtype)
    return tf.where(box, noise, x)

  return tf.cond(do, erase, lambda: x)


def train_transform(data: tf.Tensor, seed, *, image_size: int, interpolation: str,
                    scale: Sequence[float], ratio: Sequence[float], hflip: bool,
                    randaug_num_ops: int, randaug_magnitude: float, randaug_magnitude_std: float,
                    random_erase_prob: float, mean: Sequence[float], std: Sequence[float]) -> tf.Tensor:
  """Encoded image bytes -> normalised float32 [image_size, image_size, 3] (the full train recipe)."""
  s_crop, s_flip, s_ra, s_erase = split(seed, 4)
  img = decode_and_crop(data, lambda h, w: rrc_window(s_crop, h, w, scale, ratio))
  img = resize(img, [image_size, image_size], interpolation)
  if hflip:
    img = tf.where(uniform(s_flip) < 0.5, img[:, ::-1], img)
  if randaug_num_ops > 0:
    fill = tuple(min(255, round(255 * m)) for m in mean)  # timm's img_mean fill colour
    img = randaugment(img, s_ra, randaug_num_ops, randaug_magnitude, randaug_magnitude_std, fill,
                      interpolation=interpolation)
  x = normalize(img, mean, std)
  if random_erase_prob > 0:
    x = random_erase(x, s_erase, random_erase_prob)
  x.set_shape([image_size, image_size, 3])
  return x
