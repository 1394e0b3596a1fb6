"""Random in-memory batches with the shapes and dtypes of the real pipeline; numpy only, no TF.

For benchmarks and for machines without TensorFlow (`config.dataset = 'synthetic'`). The
synthetic dataset is ImageNet-shaped (sizes below). Images are drawn once from a pool of a
few random batches (drawing 150M normals per step would dominate a benchmark), labels per
step; both depend only on (config.seed, step, process_index).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from focalnet_jax.data.batches import local_batch
from focalnet_jax.data.info import DatasetInfo
from focalnet_jax.data.labels import IMAGENET1K_CLASSES

NUM_CLASSES = IMAGENET1K_CLASSES
NUM_TRAIN = 1_281_167
NUM_EVAL = 50_000
_POOL = 4  # distinct image batches cycled through


def synthetic_iterator(config, num_classes: int, *, start_step: int = 0, process_index: int = 0,
                       process_count: int = 1, eval: bool = False) -> Iterator[dict[str, np.ndarray]]:
  """Infinite train batches {'image', 'label'}, or (eval=True) one pass of NUM_EVAL examples with 'mask'."""
  batch = local_batch(config.eval_batch_size if eval else config.batch_size, process_count)
  size = config.image_size
  rng = np.random.default_rng([config.seed, process_index, int(eval)])
  pool = rng.standard_normal((_POOL, batch, size, size, 3), dtype=np.float32)
  if not eval:
    step = start_step
    while True:
      labels = np.random.default_rng([config.seed, process_index, step]).integers(0, num_classes, batch)
      yield {"image": pool[step % _POOL], "label": labels.astype(np.int32)}
      step += 1
  # Strided assignment of examples to processes, padded to the same number of batches.
  local = len(range(process_index, NUM_EVAL, process_count))
  most = len(range(0, NUM_EVAL, process_count))
  for step in range(-(-most // batch)):
    labels = np.random.default_rng([config.seed, process_index, step, 1]).integers(0, num_classes, batch)
    mask = (np.arange(step * batch, (step + 1) * batch) < local).astype(np.float32)
    yield {"image": pool[step % _POOL], "label": labels.astype(np.int32), "mask": mask}


class SyntheticData:
  """The synthetic dataset behind `config.dataset = 'synthetic'` (see `focalnet_jax.data.Dataset`)."""

  train_image_dtype = np.float32  # ready images, used as they are

  def info(self, config) -> DatasetInfo:
    del config
    return DatasetInfo(NUM_CLASSES, NUM_TRAIN, NUM_EVAL, tuple(f"class_{i}" for i in range(NUM_CLASSES)))

  def train_batches(self, config, *, start_step: int = 0, process_index: int = 0,
                    process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    return synthetic_iterator(config, NUM_CLASSES, start_step=start_step, process_index=process_index,
                              process_count=process_count)

  def eval_batches(self, config, *, process_index: int = 0,
                   process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    return synthetic_iterator(config, NUM_CLASSES, process_index=process_index, process_count=process_count,
                              eval=True)
