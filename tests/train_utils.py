"""Shared by the trainer tests: a tiny config and a small random dataset held in memory
(`focalnet_jax.data.ArrayData`, which any number of processes reads as the same global batches)."""
from __future__ import annotations

import contextlib

import os
import sys

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # `from configs import ...` inside the config files
  sys.path.insert(0, ROOT)

from configs import default  # noqa: E402
from focalnet_jax import data as data_lib  # noqa: E402

NUM_CLASSES, NUM_TRAIN, NUM_EVAL = 5, 64, 20


def tiny_config(**overrides):
  """A one-stage, 8-channel FocalNet on 8x8 images: compiles in seconds."""
  c = default.get_config()
  c.model.embed_dim = 8
  c.model.depths = (1,)
  c.model.patch_size = 4
  c.model.focal_levels = 1
  c.model.dtype = "float32"
  c.model.drop_path_rate = 0.1
  c.dataset = "in_memory"  # a label for logs: the tests pass the dataset itself (TinyData)
  c.image_size = 8
  c.batch_size = 16
  c.eval_batch_size = 16
  c.total_steps = 2
  c.warmup_epochs = 0.5
  c.log_every_steps = 1
  c.eval_every_steps = 0
  c.checkpoint_every_steps = 100
  c.fsdp_min_size = 16
  for key, value in overrides.items():
    target = c
    *path, last = key.split(".")
    for p in path:
      target = target[p]
    target[last] = value
  return c


class TinyData(data_lib.ArrayData):
  """A fixed random dataset in memory (NUM_CLASSES classes, NUM_TRAIN / NUM_EVAL examples of 8x8)
  whose train batches can call `on_step(step)` before each batch and put a NaN into the batch
  of step `nan_at` (the hooks the fault tests need)."""

  def __init__(self, on_step=None, nan_at=None, image_size=8):
    rng = np.random.default_rng(1234)
    images = rng.standard_normal((NUM_TRAIN + NUM_EVAL, image_size, image_size, 3), np.float32)
    labels = rng.integers(0, NUM_CLASSES, NUM_TRAIN + NUM_EVAL)
    super().__init__(images[:NUM_TRAIN], labels[:NUM_TRAIN], images[NUM_TRAIN:], labels[NUM_TRAIN:],
                     class_names=tuple(map(str, range(NUM_CLASSES))))
    self.on_step, self.nan_at = on_step, nan_at

  def train_batches(self, config, *, start_step=0, process_index=0, process_count=1):
    batches = super().train_batches(config, start_step=start_step, process_index=process_index,
                                    process_count=process_count)
    for step, batch in enumerate(batches, start_step):
      if self.on_step is not None:
        self.on_step(step)
      if step == self.nan_at:
        batch["image"] = batch["image"].copy()
        batch["image"][0, 0, 0, 0] = np.nan
      yield batch


@contextlib.contextmanager
def compilation_cache(cache_dir: str):
  """JAX's persistent compilation cache in `cache_dir` for the block: runs that compile the same
  step (uninterrupted, killed, resumed) compile it once. Restores the settings afterwards."""
  from jax.experimental.compilation_cache import compilation_cache as cc

  names = ("jax_persistent_cache_min_compile_time_secs", "jax_persistent_cache_min_entry_size_bytes")
  saved = {n: getattr(jax.config, n) for n in names}
  for n in names:
    jax.config.update(n, 0)
  cc.set_cache_dir(cache_dir)
  cc.reset_cache()
  try:
    yield
  finally:
    jax.config.update("jax_compilation_cache_dir", None)
    cc.reset_cache()
    for n, v in saved.items():
      jax.config.update(n, v)
