"""A folder of ImageNet-like JPEGs cut from real photos, for measuring the input pipeline.

Synthetic images compress and decode unlike photos (their DCT coefficients are not a photo's),
so pipeline throughput is measured on crops of the photographs scikit-image and scikit-learn ship:
each JPEG is a random window of one photo, resized so that its longer side is about 500 px (an
ImageNet training image's typical size), saved at quality 88-95, about one in ten in grayscale.
Needs scikit-image and scikit-learn (`pip install scikit-image scikit-learn`); nothing downloads.
"""
from __future__ import annotations

import os

import numpy as np

# scikit-image's bundled colour photographs (no download); grayscale ones are made from these.
_SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field",
                   "retina")
_LONG_SIDE = (440, 520)  # longer side of a written JPEG, px
_QUALITY = (88, 95)
_GRAY_SHARE = 0.1


def photos() -> list[np.ndarray]:
  """The colour photographs scikit-image and scikit-learn ship, uint8 (H, W, 3)."""
  try:
    import skimage.data
    from sklearn.datasets import load_sample_images
  except ImportError as e:
    raise ImportError("Real-photo JPEGs need scikit-image and scikit-learn: pip install scikit-image "
                      "scikit-learn") from e
  out = [np.asarray(getattr(skimage.data, name)(), np.uint8) for name in _SKIMAGE_PHOTOS]
  return out + [np.asarray(a, np.uint8) for a in load_sample_images().images]


def write_photo_jpegs(root: str, num: int, classes: int = 4, seed: int = 0,
                      splits=("train", "validation")) -> str:
  """Writes `num` JPEGs per split as root/<split>/c<k>/<i>.jpg (existing files are kept); returns root."""
  from PIL import Image

  sources = photos()
  rng = np.random.default_rng(seed)
  for split in splits:
    for i in range(num):
      src = sources[int(rng.integers(len(sources)))]
      h, w = src.shape[:2]
      # A window of 40-100% of each side with a random aspect, as photos are framed differently.
      ch, cw = (int(s * rng.uniform(0.4, 1.0)) for s in (h, w))
      top, left = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
      img = Image.fromarray(src[top:top + ch, left:left + cw])
      scale = rng.uniform(*_LONG_SIDE) / max(ch, cw)
      img = img.resize((max(1, round(cw * scale)), max(1, round(ch * scale))), Image.Resampling.LANCZOS)
      if rng.uniform() < _GRAY_SHARE:
        img = img.convert("L")
      quality = int(rng.integers(_QUALITY[0], _QUALITY[1] + 1))
      path = os.path.join(root, split, f"c{i % classes}", f"{i:05d}.jpg")
      if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        img.save(path, quality=quality)
  return root
