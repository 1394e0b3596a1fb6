"""The host's image transforms in TensorFlow, stateless and seeded per example.

The official FocalNet recipe (timm's `create_transform` with `rand-m9-mstd0.5-inc1`, `reprob=0.25`,
`remode='pixel'`) starts with the random resized crop (scale, log-uniform ratio; timm's 10 tries,
then a centre crop) and a bicubic resize to the model's size: that is done here, decoding only the
crop window, and the uint8 crops leave the host. The flip, RandAugment, normalisation and random
erasing run on the accelerator, in the train step (`device_augment`).

Every function takes a stateless seed (an int32/int64 tensor of shape [2]), so a transformed
example depends only on (image, seed). This module imports TensorFlow; import it lazily.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from focalnet_jax.data.eval_images import resample_filter

from focalnet_jax.data.tf_random import randint, split, uniform

_TRIES = 10  # RandomResizedCrop's candidate windows
_FILTER_SUPPORT = {"bicubic": 2.0, "bilinear": 1.0}  # PIL's filter radii, in output pixels


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


def _decode_window(data: tf.Tensor, window_fn: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]):
  """(uint8 RGB pixels of the window `window_fn(height, width)` = [top, left, h, w], the window,
  [height, width] of the whole image).

  JPEGs decode only the window's rows and blocks, with libjpeg's accurate integer DCT as PIL (and
  so timm) decodes them (TensorFlow's default fast DCT is off by about one level on average, and up
  to seven); other formats (PNG, GIF's first frame, BMP, WebP) decode fully, then are cropped.
  Grayscale and RGBA become RGB.
  """
  def jpeg():
    shape = tf.image.extract_jpeg_shape(data)
    win = window_fn(shape[0], shape[1])
    return tf.image.decode_and_crop_jpeg(data, win, channels=3, dct_method="INTEGER_ACCURATE"), win, shape[:2]

  def other():
    img = tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)
    shape = tf.shape(img)
    win = window_fn(shape[0], shape[1])
    return img[win[0]:win[0] + win[2], win[1]:win[1] + win[3]], win, shape[:2]

  img, win, shape = tf.cond(tf.io.is_jpeg(data), jpeg, other)
  img.set_shape([None, None, 3])
  return img, win, shape


def decode_and_crop(data: tf.Tensor, window_fn: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]) -> tf.Tensor:
  """Encoded image bytes -> uint8 RGB [h, w, 3] of the window `window_fn(height, width)`."""
  return _decode_window(data, window_fn)[0]


def _pil_resize(pixels: np.ndarray, size: np.ndarray, box: np.ndarray, method: str) -> np.ndarray:
  from PIL import Image
  out = Image.fromarray(pixels).resize((int(size[1]), int(size[0])), resample_filter(method),
                                       box=tuple(float(v) for v in box))
  return np.asarray(out)


def resize(img: tf.Tensor, size, method: str, box=None) -> tf.Tensor:
  """PIL's antialiased resize of `img` (or of the source `box` (left, upper, right, lower) in it) to
  `size` (h, w): uint8, timm's pixels exactly. PIL's C code does it (releasing the GIL): TF's
  antialiased resize is several times slower, and rounds differently."""
  resample_filter(method)  # a ValueError now, not inside the pipeline
  if box is None:
    shape = tf.cast(tf.shape(img), tf.float64)
    box = tf.stack([tf.constant(0.0, tf.float64), tf.constant(0.0, tf.float64), shape[1], shape[0]])
  out = tf.numpy_function(functools.partial(_pil_resize, method=method),
                          [img, tf.cast(size, tf.int32), tf.cast(box, tf.float64)], tf.uint8, stateful=False)
  out.set_shape([None, None, 3])
  return out


def eval_transform(data: tf.Tensor, image_size: int, crop_ratio: float, interpolation: str) -> tf.Tensor:
  """Decode, resize the shorter side to floor(image_size / crop_ratio), centre crop image_size: uint8.

  Only the part of the image the centre crop samples is decoded and resized: the crop's box in the
  source plus the filter's support (PIL's resize of that box gives the pixels of the full resize
  followed by the crop).
  """
  support = _FILTER_SUPPORT[interpolation] if interpolation in _FILTER_SUPPORT else 0.0

  def geometry(height, width):
    """(the window to decode, the crop's source box within it)."""
    # float64, as torchvision computes in Python: float32 truncates some long sides one pixel short.
    h, w = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    short = tf.constant(math.floor(image_size / crop_ratio), tf.float64)
    # torchvision's Resize(int): the shorter side becomes `short` (the width when the sides are
    # equal), the longer one is truncated (`focalnet_jax.data.eval_images.resized_shape`).
    new_h = tf.where(w <= h, tf.floor(short * h / w), short)
    new_w = tf.where(w <= h, short, tf.floor(short * w / h))
    # CenterCrop's offsets: Python's round, halves to even, as tf.round.
    top, left = tf.round((new_h - image_size) / 2.0), tf.round((new_w - image_size) / 2.0)
    sy, sx = h / new_h, w / new_w  # PIL's scale: source pixels per output pixel
    box = tf.stack([left * sx, top * sy, (left + image_size) * sx, (top + image_size) * sy])
    # The filter reaches `support` output pixels, i.e. support * scale source pixels when shrinking.
    reach = tf.stack([support * tf.maximum(sx, 1.0), support * tf.maximum(sy, 1.0)]) + 1.0
    lo = tf.maximum(tf.floor(box[:2] - reach), 0.0)
    hi = tf.minimum(tf.math.ceil(box[2:] + reach), tf.stack([w, h]))
    return tf.cast(tf.stack([lo[1], lo[0], hi[1] - lo[1], hi[0] - lo[0]]), tf.int32), box - tf.concat([lo, lo], 0)

  img, _, shape = _decode_window(data, lambda h, w: geometry(h, w)[0])
  img = resize(img, [image_size, image_size], interpolation, box=geometry(shape[0], shape[1])[1])
  img.set_shape([image_size, image_size, 3])
  return img


def normalize(img: tf.Tensor, mean: Sequence[float], std: Sequence[float]) -> tf.Tensor:
  """uint8 [0, 255] -> float32 (x / 255 - mean) / std."""
  x = tf.cast(img, tf.float32) / 255.0
  return (x - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def train_crop(data: tf.Tensor, seed, *, image_size: int, interpolation: str, scale: Sequence[float],
               ratio: Sequence[float]) -> tf.Tensor:
  """Encoded image bytes -> uint8 [image_size, image_size, 3]: the recipe's random resized crop,
  all of it that runs on the host (`device_augment` does the rest in the train step)."""
  img = decode_and_crop(data, lambda h, w: rrc_window(seed, h, w, scale, ratio))
  img = resize(img, [image_size, image_size], interpolation)
  img.set_shape([image_size, image_size, 3])
  return img
