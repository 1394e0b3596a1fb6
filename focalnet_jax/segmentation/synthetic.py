"""A tiny synthetic segmentation task for tests and smoke runs: on a noisy background (class 0),
one axis-aligned square of class 1..K-1 in that class's colour; the labels mark the square, and its
one-pixel outline is `ignore_index` (as datasets leave object boundaries unlabelled).
Batches are a pure function of (seed, step)."""
from __future__ import annotations

import numpy as np


def palette(num_classes: int) -> np.ndarray:
  """One RGB colour per class, fixed, well apart (class 0 is the background's)."""
  return np.random.default_rng(1234).uniform(-1.5, 1.5, (num_classes, 3)).astype(np.float32)


def squares_batch(seed: int, step: int, batch: int, size: tuple[int, int], num_classes: int,
                  ignore_index: int, noise: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
  """(images (B, H, W, 3) float32, labels (B, H, W) int32) for step `step` of run `seed`."""
  rng = np.random.default_rng((seed, step))
  height, width = size
  colours = palette(num_classes)
  labels = np.zeros((batch, height, width), np.int32)
  for b in range(batch):
    cls = rng.integers(1, num_classes)
    side = rng.integers(min(height, width) // 4, min(height, width) // 2 + 1)
    top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
    labels[b, top:top + side, left:left + side] = ignore_index
    labels[b, top + 1:top + side - 1, left + 1:left + side - 1] = cls
  body = np.where(labels == ignore_index, 0, labels)
  images = colours[body] + noise * rng.standard_normal((batch, height, width, 3)).astype(np.float32)
  return images.astype(np.float32), labels
