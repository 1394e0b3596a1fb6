"""Label spaces: ImageNet class names and the ImageNet variants evaluated in the 1K space.

The files in `label_maps/` are data: the 1K synsets in the standard (sorted-wnid) order that
TFDS `imagenet2012` uses, with their WordNet lemmas; the 21,842 synsets of the official
(Microsoft) ImageNet-22K label map, whose first 1000 entries are the 1K classes in 1K order;
and the 200 synsets of ImageNet-A and ImageNet-R.

TFDS labels `imagenet_a` / `imagenet_r` in the 1K space already, so evaluating a 1K model on
them means restricting its logits to those 200 classes; `imagenet_v2` shares the 1K labels;
`imagenet2012_real` carries a set of correct labels per image ("ReaL", Beyer et al. 2020).
"""
from __future__ import annotations

import functools
import os

import numpy as np

_DIR = os.path.join(os.path.dirname(__file__), "label_maps")

IMAGENET1K_CLASSES = 1000
IMAGENET22K_CLASSES = 21842


@functools.cache
def _read_tsv(name: str) -> tuple[tuple[str, str], ...]:
  with open(os.path.join(_DIR, name)) as f:
    return tuple(tuple(line.rstrip("\n").split("\t", 1)) for line in f if line.strip())


@functools.cache
def imagenet1k_wnids() -> tuple[str, ...]:
  return tuple(w for w, _ in _read_tsv("imagenet1k.tsv"))


def _short(lemma: str) -> str:
  return lemma.split(",")[0].strip()


def imagenet_class_names(num_classes: int) -> tuple[str, ...] | None:
  """Short human-readable names for a 1K or official-22K head; None for other sizes."""
  if num_classes == IMAGENET1K_CLASSES:
    return tuple(_short(n) for _, n in _read_tsv("imagenet1k.tsv"))
  if num_classes == IMAGENET22K_CLASSES:
    return tuple(_short(n) for _, n in _read_tsv("imagenet22k_ms.tsv"))
  return None


@functools.cache
def subset_indices(dataset: str) -> np.ndarray | None:
  """The 1K class indices an ImageNet variant is restricted to (sorted), or None for all.

  `dataset` is a TFDS name, optionally with a version or config ('imagenet_r:0.2.0').
  """
  base = dataset.split(":")[0].split("/")[0]
  if base not in ("imagenet_a", "imagenet_r"):
    return None
  with open(os.path.join(_DIR, f"{base}_wnids.txt")) as f:
    wnids = f.read().split()
  position = {w: i for i, w in enumerate(imagenet1k_wnids())}
  return np.array(sorted(position[w] for w in wnids), dtype=np.int32)
