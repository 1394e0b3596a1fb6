"""What the trainer and evaluation need to know about a dataset before reading it."""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_classes: int
  num_train: int  # examples in config.train_split
  num_eval: int  # examples in config.eval_split
  class_names: tuple[str, ...]  # index = label


def check_labels(labels, num_classes: int, where: str) -> None:
  """Every label an int in [0, num_classes): a label of -1 or of a class the head lacks would
  train on nothing and be counted wrong at eval, silently. Checked on the host for every batch
  of every data door (a few microseconds)."""
  labels = np.asarray(labels)
  if labels.size == 0:
    return
  if not np.issubdtype(labels.dtype, np.integer):
    whole = np.issubdtype(labels.dtype, np.floating) and np.all(np.isfinite(labels)) and np.all(labels == np.round(labels))
    if not whole:
      raise ValueError(f"Labels in {where} must be class indices (ints); got {labels.dtype} values such as "
                       f"{labels.ravel()[0]!r}.")
  lo, hi = labels.min(), labels.max()
  if lo < 0 or hi >= num_classes:
    bad = labels.ravel()[(labels.ravel() < 0) | (labels.ravel() >= num_classes)]
    raise ValueError(
        f"Labels in {where} must lie in [0, {num_classes}) for {num_classes} classes; found {bad.size} outside it "
        f"(e.g. {int(bad[0])}). Give each example its class index (or more class names / a larger "
        "model.num_classes if the labels are right).")
