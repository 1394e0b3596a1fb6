"""What the trainer and evaluation need to know about a dataset before reading it."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_classes: int
  num_train: int  # examples in config.train_split
  num_eval: int  # examples in config.eval_split
  class_names: tuple[str, ...]  # index = label
