"""A dataset held in memory as numpy arrays: no TensorFlow, no files.

For small datasets, tests and machines without TensorFlow. By default the examples are used as
given (float32, already at `config.image_size`, normalised as the model expects). With
`augment=True` they are uint8 images of any one size, and batches go through the recipe's crop,
resize, flip and normalisation in numpy (`transforms_np`; each example's randomness drawn from
(seed, epoch, its position in the epoch)), and eval through the resize and centre crop.
`digits_data(config)` is scikit-learn's digits this way: the quickstart without TensorFlow.

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

from focalnet_jax.data import transforms_np
from focalnet_jax.data.batches import local_batch
from focalnet_jax.data.info import DatasetInfo


class ArrayData:
  """`train_images` (N, H, W, 3) with int `train_labels` (N,), and the same for eval: float32 and
  ready to use, or (`augment=True`) uint8 (N, H, W) or (N, H, W, 3) for the recipe's transforms."""

  train_image_dtype = np.float32  # batches are normalised on the host (`transforms_np`)

  def __init__(self, train_images: np.ndarray, train_labels: np.ndarray, eval_images: np.ndarray,
               eval_labels: np.ndarray, class_names: Sequence[str] | None = None, *, augment: bool = False):
    self.augment = augment
    dtype = np.uint8 if augment else np.float32
    self.train = (np.asarray(train_images, dtype), np.asarray(train_labels, np.int32))
    self.eval = (np.asarray(eval_images, dtype), np.asarray(eval_labels, np.int32))
    for name, (images, labels) in (("train", self.train), ("eval", self.eval)):
      ok = images.ndim == 4 and images.shape[-1] == 3 or augment and images.ndim == 3
      if not ok or len(images) != len(labels) or not len(images):
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
    if self.augment:
      transforms_np.check_supported(config)
    elif images.shape[1:3] != (config.image_size, config.image_size):
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
      batch = images[rows]
      if self.augment:
        batch = np.stack([transforms_np.train_transform(images[r], np.random.default_rng([config.seed, epoch, i]),
                                                        config) for i, r in enumerate(rows, start)])
      yield {"image": batch, "label": labels[rows]}
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
      batch = images[idx]
      if self.augment:
        batch = np.stack([transforms_np.eval_transform(images[i], config) for i in idx])
      yield {"image": batch, "label": labels[idx], "mask": mask}


def digits_data(config) -> ArrayData:
  """scikit-learn's digits in memory, with the pixels of the 'digits' folder (no TensorFlow)."""
  from focalnet_jax.data import digits  # noqa: PLC0415 - scikit-learn is imported on use

  if (config.train_split, config.eval_split) != ("train", "test"):
    raise ValueError(f"The digits have splits 'train' and 'test'; got train_split={config.train_split!r}, "
                     f"eval_split={config.eval_split!r}.")
  splits = digits.digit_images(config.digits_split_seed)
  return ArrayData(splits["train"][0], splits["train"][1], splits["test"][0], splits["test"][1],
                   class_names=tuple(str(d) for d in range(10)), augment=True)
