"""The recipe's crop, resize and flip in numpy and PIL, for datasets held in memory (no TensorFlow).

The same operations as the tf.data pipeline's (`augment.py`): timm's RandomResizedCrop window
(ten tries, then the largest centre crop with the aspect clamped), a resize with PIL's
antialiasing filters, an optional horizontal flip, normalisation; evaluation resizes the shorter
side to floor(image_size / crop_ratio) and centre-crops. RandAugment and random erasing are not
here: configs that use them need the tf.data pipeline. Randomness comes from a numpy Generator
the caller seeds per example, so batches stay a pure function of (seed, step, process).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image

from focalnet_jax.data import eval_images
from focalnet_jax.data.eval_images import normalize

_TRIES = 10


def check_supported(config) -> None:
  """The recipe fields these transforms cannot apply are errors, not silently skipped."""
  a = config.aug
  if a.randaug_num_ops > 0 or a.random_erase_prob > 0:
    raise ValueError(
        f"RandAugment (aug.randaug_num_ops={a.randaug_num_ops}) and random erasing (aug.random_erase_prob="
        f"{a.random_erase_prob}) run only in the tf.data pipeline, which needs TensorFlow; set both to 0 to "
        "train on an in-memory dataset, or install TensorFlow (requirements.txt).")
  eval_images.resample_filter(config.interpolation)  # a ValueError naming the choices


def rrc_window(rng: np.random.Generator, height: int, width: int, scale: Sequence[float],
               ratio: Sequence[float]) -> tuple[int, int, int, int]:
  """(top, left, h, w) of a RandomResizedCrop window, as timm/torchvision choose it."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(_TRIES):
    target = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  in_ratio = width / height  # fallback: the whole image, cropped to the nearest allowed aspect
  if in_ratio < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    h, w = height, int(round(height * ratio[1]))
  else:
    h, w = height, width
  return (height - h) // 2, (width - w) // 2, h, w


def _rgb(image: np.ndarray) -> Image.Image:
  img = Image.fromarray(np.asarray(image, np.uint8))
  return img.convert("RGB") if img.mode != "RGB" else img


def train_transform(image: np.ndarray, rng: np.random.Generator, config) -> np.ndarray:
  """uint8 (H, W[, 3]) -> normalised float32 (S, S, 3): crop, resize, flip."""
  a, size = config.aug, config.image_size
  img = _rgb(image)
  top, left, h, w = rrc_window(rng, img.height, img.width, a.rrc_scale, a.rrc_ratio)
  img = img.resize((size, size), eval_images.resample_filter(config.interpolation), box=(left, top, left + w, top + h))
  out = np.asarray(img)
  if a.hflip and rng.uniform() < 0.5:
    out = out[:, ::-1]
  return normalize(out, a.mean, a.std)


def eval_transform(image: np.ndarray, config) -> np.ndarray:
  """uint8 (H, W[, 3]) -> normalised float32 (S, S, 3): resize the shorter side, centre crop, with
  the rounding of `eval_images` (torchvision's)."""
  pixels = eval_images.resize_and_crop(_rgb(image), config.image_size, config.crop_ratio,
                                       eval_images.resample_filter(config.interpolation))
  return normalize(pixels, config.aug.mean, config.aug.std)
