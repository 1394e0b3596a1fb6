"""Random in-memory batches with the shapes and dtypes of the real pipeline; numpy only, no TF.

For benchmarks and for machines without TensorFlow (`config.dataset = 'synthetic'`). The
synthetic dataset is ImageNet-shaped (sizes below). Images are drawn once from a pool of a
few random batches (drawing 150M normals per step would dominate a benchmark), labels per
step; both depend only on (config.seed, step, process_index).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

NUM_CLASSES = 1000
NUM_TRAIN = 1_281_167
NUM_EVAL = 50_000
_POOL = 4  # distinct image batches cycled through


def _local_batch(global_batch: int, process_count: int) -> int:
  if global_batch % process_count:
    raise ValueError(f"Batch size {global_batch} is not divisible by the process count {process_count}.")
  return global_batch // process_count


def synthetic_iterator(config, num_classes: int, *, start_step: int = 0, process_index: int = 0,
                       process_count: int = 1, eval: bool = False) -> Iterator[dict[str, np.ndarray]]:
  """Infinite train batches {'image', 'label'}, or (eval=True) one pass of NUM_EVAL examples with 'mask'."""
  batch = _local_batch(config.eval_batch_size if eval else config.batch_size, process_count)
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
