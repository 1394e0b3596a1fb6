"""scikit-learn's digits (1,797 8x8 images, 10 classes) written once as an image folder.

The quickstart dataset: small enough to train on a laptop CPU in minutes, real enough that
accuracy means something. The images (values 0..16) are scaled to 0..255 and upsampled 4x to
32x32 with bicubic interpolation, so the pipeline's crops and resizes act on smooth strokes
rather than on 8 blocky pixels. They are written as grayscale PNGs (the pipeline makes them
RGB) into <data_dir>/digits/{train,test}/<digit>/<index>.png with a stratified 80/20 split
drawn from `split_seed`. TF-free.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np

TEST_FRACTION = 0.2
SIZE = 32  # written image side (the 8x8 originals upsampled 4x)
_MARKER = "digits.json"  # written last: its presence means the folder is complete


def digit_images(split_seed: int) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """{'train'|'test': (images uint8 (N, SIZE, SIZE), labels (N,), indices into the 1,797)}, the
  split stratified by digit and drawn from `split_seed`, in index order: the pixels the folder
  holds (and the in-memory digits dataset reads without TensorFlow)."""
  from PIL import Image
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split

  digits = load_digits()  # bundled with scikit-learn: no download
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
  index = np.arange(len(images))
  train_idx, test_idx = train_test_split(index, test_size=TEST_FRACTION, stratify=digits.target,
                                         random_state=split_seed)
  out = {}
  for split, idx in (("train", np.sort(train_idx)), ("test", np.sort(test_idx))):
    big = [np.asarray(Image.fromarray(images[i]).resize((SIZE, SIZE), Image.Resampling.BICUBIC)) for i in idx]
    out[split] = (np.stack(big), digits.target[idx].astype(np.int32), idx)
  return out


def _write(root: str, split_seed: int) -> dict:
  from PIL import Image

  counts = {}
  for split, (images, labels, idx) in digit_images(split_seed).items():
    for img, label, i in zip(images, labels, idx):
      class_dir = os.path.join(root, split, str(int(label)))
      os.makedirs(class_dir, exist_ok=True)
      Image.fromarray(img).save(os.path.join(class_dir, f"{i:04d}.png"))
    counts[split] = len(idx)
  meta = {"split_seed": split_seed, "counts": counts, "size": SIZE}
  with open(os.path.join(root, _MARKER), "w") as f:
    json.dump(meta, f)
  return meta


def prepare_digits(data_dir: str | None, split_seed: int) -> str:
  """Writes the digits folder under `data_dir` unless it is already there; returns its root.

  Idempotent and safe against interruption and concurrent writers: the folder is written into
  a temporary directory beside it and renamed into place only when complete. An existing folder
  written with another `split_seed` is an error (delete it, or use another data_dir).
  """
  if not data_dir:
    raise ValueError("dataset 'digits' needs a data_dir to write its image folder into (train.py uses "
                     "<workdir>/data); pass --config.data_dir=DIR (eval.py: --data_dir DIR).")
  data_dir = os.path.abspath(os.path.expanduser(data_dir))
  root = os.path.join(data_dir, "digits")
  marker = os.path.join(root, _MARKER)
  if not os.path.exists(marker):
    if os.path.exists(root):
      raise ValueError(f"{root!r} exists but is not a complete digits folder (no {_MARKER}); "
                       "delete it to have it rewritten.")
    os.makedirs(data_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".digits-tmp-", dir=data_dir)
    try:
      umask = os.umask(0)
      os.umask(umask)
      os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0o700 would keep others (and their eval.py) out
      _write(tmp, split_seed)
      try:
        os.rename(tmp, root)
      except OSError:
        if not os.path.exists(marker):  # not a concurrent writer that won the race
          raise
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
  with open(marker) as f:
    meta = json.load(f)
  if meta["split_seed"] != split_seed:
    raise ValueError(f"{root!r} was written with digits_split_seed={meta['split_seed']}, not {split_seed}; "
                     "delete it to rewrite it with the new split, or use another data_dir.")
  return root
