r"""Writes scikit-image's LFW subset (100 face and 100 non-face 25x25 crops, real photographs)
as an image folder, to show the quickstart running unchanged on other real images:

  pip install scikit-image==0.26.0
  python scripts/lfw_faces_folder.py --output /tmp/lfw_faces
  python train.py --config configs/quickstart.py --workdir runs/lfw \
      --config.dataset=folder:/tmp/lfw_faces

Layout: <output>/{train,test}/{face,non_face}/<index>.png, a stratified 80/20 split (seed 0).
Only the array file shipped inside the scikit-image wheel is read; nothing is downloaded.
"""
from __future__ import annotations

import argparse
import importlib.util
import os

import numpy as np
from PIL import Image


def lfw_subset() -> np.ndarray:
  spec = importlib.util.find_spec("skimage")
  if spec is None:
    raise SystemExit("scikit-image is not installed: pip install scikit-image==0.26.0")
  return np.load(os.path.join(os.path.dirname(spec.origin), "data", "lfw_subset.npy"))


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--output", required=True)
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args()
  images = lfw_subset()  # (200, 25, 25) in [0, 1]; the first 100 are faces
  labels = np.array(["face"] * 100 + ["non_face"] * 100)
  rng = np.random.default_rng(args.seed)
  for cls in ("face", "non_face"):
    idx = rng.permutation(np.flatnonzero(labels == cls))
    for split, part in (("test", idx[:20]), ("train", idx[20:])):
      os.makedirs(os.path.join(args.output, split, cls), exist_ok=True)
      for i in part:
        Image.fromarray((images[i] * 255).round().astype(np.uint8)).save(
            os.path.join(args.output, split, cls, f"{i:03d}.png"))
  print(f"Wrote 160 train and 40 test images to {args.output}")


if __name__ == "__main__":
  main()
