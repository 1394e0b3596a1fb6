"""The train recipe's per-image augmentations, on the accelerator, inside the jitted train step.

The host ships each example as uint8 pixels already cropped and resized to the model's size
(random resized crop); the step then runs, vmapped over the batch, what timm's `create_transform`
does next for the official FocalNet recipe:

  horizontal flip -> RandAugment (`randaugment_jax`, PIL's pixels) -> /255 -> normalise
  -> random erasing (mode 'pixel', one box)

Example i of a step's (global) batch draws from `fold_in(key, i)`, the key a function of
(seed, step): a batch stays a pure function of the step, and a resumed run augments exactly as an
uninterrupted one.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp

from focalnet_jax.data import randaugment_jax

# timm's random erasing: box area fraction and aspect range, tries per image.
_ERASE_AREA = (0.02, 1.0 / 3.0)
_ERASE_ASPECT = (0.3, 1.0 / 0.3)
_TRIES = 10


def normalize(img: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """uint8 [0, 255] -> float32 (x / 255 - mean) / std, torchvision's ToTensor and Normalize."""
  x = img.astype(jnp.float32) / jnp.float32(255.0)
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def _randint(key, upper):
  """Uniform integer in [0, upper], inclusive, as Python's random.randint(0, upper)."""
  u = jax.random.uniform(key, (), jnp.float32)
  return jnp.minimum(jnp.floor(u * (upper + 1).astype(jnp.float32)).astype(jnp.int32), upper)


def random_erase(x: jax.Array, key, prob: float) -> jax.Array:
  """timm's RandomErasing (mode 'pixel', one box) on a normalised float image [H, W, C].

  With probability `prob`, a box of area U(2%, 1/3) of the image and aspect log-uniform in
  (0.3, 1/0.3) (the first of ten tries that fits strictly inside) is filled with per-pixel N(0, 1)
  noise.
  """
  k_apply, k_area, k_aspect, k_top, k_left, k_noise = jax.random.split(key, 6)
  height, width = x.shape[0], x.shape[1]
  target = height * width * jax.random.uniform(k_area, (_TRIES,), jnp.float32, *_ERASE_AREA)
  aspect = jnp.exp(jax.random.uniform(k_aspect, (_TRIES,), jnp.float32, math.log(_ERASE_ASPECT[0]),
                                      math.log(_ERASE_ASPECT[1])))
  hs = jnp.round(jnp.sqrt(target * aspect)).astype(jnp.int32)
  ws = jnp.round(jnp.sqrt(target / aspect)).astype(jnp.int32)
  fits = (ws < width) & (hs < height)
  first = jnp.argmax(fits)
  do = (jax.random.uniform(k_apply, (), jnp.float32) < prob) & jnp.any(fits)
  h, w = hs[first], ws[first]
  top, left = _randint(k_top, height - h), _randint(k_left, width - w)
  rows = jnp.arange(height)[:, None, None]
  cols = jnp.arange(width)[None, :, None]
  box = do & (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
  return jnp.where(box, jax.random.normal(k_noise, x.shape, x.dtype), x)


def augment_image(img: jax.Array, key, aug, interpolation: str) -> jax.Array:
  """One uint8 [S, S, 3] crop -> its normalised float32 training image (the module doc's steps)."""
  k_flip, k_ra, k_erase = jax.random.split(key, 3)
  if aug.hflip:
    img = jnp.where(jax.random.uniform(k_flip, (), jnp.float32) < 0.5, img[:, ::-1], img)
  if aug.randaug_num_ops > 0:
    fill = tuple(min(255, round(255 * m)) for m in aug.mean)  # timm's img_mean fill colour
    img = randaugment_jax.randaugment(img, k_ra, aug.randaug_num_ops, float(aug.randaug_magnitude),
                                      float(aug.randaug_magnitude_std), fill, interpolation=interpolation)
  x = normalize(img, aug.mean, aug.std)
  if aug.random_erase_prob > 0:
    x = random_erase(x, k_erase, float(aug.random_erase_prob))
  return x


def augment_batch(key, images: jax.Array, config) -> jax.Array:
  """uint8 (B, S, S, 3) crops -> normalised float32 training images; example i draws from fold_in(key, i)."""
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(images.shape[0]))
  return jax.vmap(lambda img, k: augment_image(img, k, config.aug, config.interpolation))(images, keys)
