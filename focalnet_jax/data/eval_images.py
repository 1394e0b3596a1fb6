"""The evaluation transform on image files, without TensorFlow: timm's pixels exactly.

timm (and torchvision) evaluate ImageNet models with
  PIL decode (JPEG: libjpeg's accurate integer DCT, PIL's default) -> RGB
  -> Resize(floor(image_size / crop_ratio)) of the shorter side, the longer side truncated
     (`int(short * long / short_side)`), with PIL's antialiased bicubic or bilinear filter
  -> CenterCrop(image_size), the offsets rounded (`int(round((side - image_size) / 2))`)
  -> /255 -> (x - mean) / std, in float32.
This module does the same steps with PIL and numpy, so a prediction here sees the pixels a timm
user's model sees; `augment.eval_transform` (tf.data) follows the same size and crop rules.
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np

# ImageNet's channel statistics, which every published FocalNet was trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resized_shape(height: int, width: int, image_size: int, crop_ratio: float) -> tuple[int, int]:
  """(h, w) after torchvision's `Resize(floor(image_size / crop_ratio))` of an (height, width) image."""
  if not 0.0 < crop_ratio <= 1.0:
    raise ValueError(f"crop_ratio must be in (0, 1], got {crop_ratio}.")
  short = math.floor(image_size / crop_ratio)
  # torchvision: the longer side is int(short * long / short_side), in Python (float64) arithmetic.
  if width <= height:
    return int(short * height / width), short
  return short, int(short * width / height)


def crop_offsets(height: int, width: int, image_size: int) -> tuple[int, int]:
  """(top, left) of torchvision's `CenterCrop(image_size)`: Python's round, halves to even."""
  return int(round((height - image_size) / 2.0)), int(round((width - image_size) / 2.0))


def resample_filter(interpolation: str):
  """PIL's resampling filter for `interpolation` ('bicubic' or 'bilinear'); ValueError otherwise."""
  from PIL import Image

  filters = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
  if interpolation not in filters:
    raise ValueError(f"interpolation must be 'bicubic' or 'bilinear', got {interpolation!r}.")
  return filters[interpolation]


def to_rgb(img):
  """A PIL image in any mode -> RGB with the pixels TensorFlow's decoder (the training pipeline)
  gives: grayscale, palette, CMYK and alpha modes convert as PIL does (TF agrees); 16-bit samples
  keep their high byte (PIL's convert would clip them to 255, near-white); EXIF orientation is not
  applied (neither TF nor timm applies it)."""
  from PIL import Image

  if img.mode.startswith("I;16") or img.mode == "I":  # 16-bit grayscale (PIL reads 16-bit RGB as 8-bit)
    wide = np.asarray(img, np.uint32)
    return Image.fromarray((wide >> 8).clip(0, 255).astype(np.uint8), "L").convert("RGB")
  if img.mode == "F":
    raise ValueError("floating-point pixels (PIL mode 'F') have no defined 0-255 scale; convert the image to "
                     "8- or 16-bit PNG")
  return img.convert("RGB")  # grayscale, palette, CMYK and RGBA alike; a GIF's first frame


def read_rgb(path: str):
  """The one image reader of every path that reads files without TensorFlow (eval.py --image,
  visualize.py, `load_eval_images`, the folder scan's reference): a decoded RGB PIL image."""
  from PIL import Image, UnidentifiedImageError

  if not os.path.isfile(path):
    raise FileNotFoundError(f"No image file at {path!r}.")
  try:
    with Image.open(path) as img:
      return to_rgb(img)
  except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
    raise ValueError(f"Cannot read image {path!r}: {type(e).__name__}: {e}") from e


def eval_pixels(path: str, image_size: int = 224, crop_ratio: float = 0.875,
                interpolation: str = "bicubic") -> np.ndarray:
  """One image file -> its resized, centre-cropped uint8 RGB pixels (image_size, image_size, 3)."""
  resample = resample_filter(interpolation)
  return resize_and_crop(read_rgb(path), image_size, crop_ratio, resample)


def resize_and_crop(img, image_size: int, crop_ratio: float, resample) -> np.ndarray:
  """A decoded RGB PIL image -> the uint8 pixels of Resize(floor(image_size / crop_ratio)) and
  CenterCrop(image_size), torchvision's rules (`resized_shape`, `crop_offsets`)."""
  h, w = resized_shape(img.height, img.width, image_size, crop_ratio)
  if (h, w) != (img.height, img.width):
    img = img.resize((w, h), resample)
  top, left = crop_offsets(h, w, image_size)
  return np.asarray(img.crop((left, top, left + image_size, top + image_size)), np.uint8)


def normalize(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
  """uint8 [0, 255] -> float32 (x / 255 - mean) / std, the operations of torchvision's ToTensor, Normalize."""
  x = pixels.astype(np.float32) / np.float32(255.0)
  return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def load_eval_images(paths: Sequence[str], image_size: int = 224, crop_ratio: float = 0.875,
                     interpolation: str = "bicubic", mean: Sequence[float] = IMAGENET_MEAN,
                     std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
  """Image files -> float32 (N, image_size, image_size, 3), normalised, as timm's eval transform makes them.

  Pass the weights' own settings: `from_pretrained(...).info.transform` holds them (timm's
  `ms_in1k` weights are evaluated at crop_ratio 0.9, the official ones at 0.875).
  """
  if isinstance(paths, str):
    paths = [paths]
  if not paths:
    raise ValueError("load_eval_images needs at least one image path.")
  return np.stack([normalize(eval_pixels(p, image_size, crop_ratio, interpolation), mean, std) for p in paths])
