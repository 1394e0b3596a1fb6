"""A dataset held in memory as numpy arrays: no TensorFlow, no files.

For small datasets, tests and machines without TensorFlow. The examples are used as given
(already at `config.image_size`, normalised as the model expects); no augmentation is applied.

The same guarantees as the tf.data pipeline: the train batch at step t is a pure function of
(config.seed, t, process), so a resumed run sees exactly the batches an uninterrupted one would;
epoch e is a permutation of the train set drawn from (seed, e), epochs drop their last partial
batch, and process p of n takes rows [p * B/n, (p + 1) * B/n) of each global batch, so any number
of processes sees the same global batches. Eval is one pass over the eval set in global batches
padded with mask-0 rows, cut between processes the same way.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from focalnet_jax.data.batches import local_batch
from focalnet_jax.data.info import DatasetInfo


class ArrayData:
  """`train_images` (N, H, W, 3) float32 with int `train_labels` (N,), and the same for eval."""

  def __init__(self, train_images: np.ndarray, train_labels: np.ndarray, eval_images: np.ndarray,
               eval_labels: np.ndarray, class_names: Sequence[str] | None = None):
    self.train = (np.asarray(train_images, np.float32), np.asarray(train_labels, np.int32))
    self.eval = (np.asarray(eval_images, np.float32), np.asarray(eval_labels, np.int32))
    for name, (images, labels) in (("train", self.train), ("eval", self.eval)):
      if images.ndim != 4 or images.shape[-1] != 3 or len(images) != len(labels) or not len(images):
        raise ValueError(f"{name} images must be a non-empty (N, H, W, 3) array with one label each; got "
                         f"images {images.shape} and labels {labels.shape}.")
    num_classes = int(max(self.train[1].max(), self.eval[1].max())) + 1
    names = tuple(class_names) if class_names is not None else tuple(f"class_{i}" for i in range(num_classes))
    if len(names) < num_classes:
      raise ValueError(f"{len(names)} class names for labels up to {num_classes - 1}.")
    self._info = DatasetInfo(len(names), len(self.train[1]), len(self.eval[1]), names)

  def info(self, config) -> DatasetInfo:
    del config
    return self._info

  def _check_size(self, config, images: np.ndarray) -> None:
    if images.shape[1:3] != (config.image_size, config.image_size):
      raise ValueError(f"The arrays hold {images.shape[1]}x{images.shape[2]} images but config.image_size is "
                       f"{config.image_size}; resize them or set --config.image_size={images.shape[1]}.")

  def train_batches(self, config, *, start_step: int = 0, process_index: int = 0,
                    process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    images, labels = self.train
    self._check_size(config, images)
    b = local_batch(config.batch_size, process_count)
    steps_per_epoch = len(labels) // config.batch_size
    if steps_per_epoch < 1:
      raise ValueError(f"batch_size {config.batch_size} exceeds the {len(labels)} train examples.")
    step = start_step
    while True:
      epoch, position = divmod(step, steps_per_epoch)
      order = np.random.default_rng([config.seed, epoch]).permutation(len(labels))
      start = position * config.batch_size + process_index * b
      rows = order[start:start + b]
      yield {"image": images[rows], "label": labels[rows]}
      step += 1

  def eval_batches(self, config, *, process_index: int = 0,
                   process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    images, labels = self.eval
    self._check_size(config, images)
    b, n = config.eval_batch_size, len(labels)
    local = local_batch(b, process_count)
    for start in range(0, n, b):
      idx = np.arange(start, start + b)[process_index * local:(process_index + 1) * local]
      mask = (idx < n).astype(np.float32)
      idx = np.minimum(idx, n - 1)
      yield {"image": images[idx], "label": labels[idx], "mask": mask}
