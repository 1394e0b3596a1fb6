"""Shared by the trainer tests: a tiny config and a deterministic in-memory dataset.

The in-memory source yields, at step t, rows [p*b, (p+1)*b) of a global batch that depends only
on (seed, t), so runs with any number of processes see the same global batches.
"""
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
  c.dataset = "in_memory"
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


def info(config=None):
  return data_lib.DatasetInfo(NUM_CLASSES, NUM_TRAIN, NUM_EVAL, tuple(map(str, range(NUM_CLASSES))))


def train_batches(config, info_, start_step, process_index=0, process_count=1, on_step=None):
  b = config.batch_size // process_count
  step = start_step
  while True:
    if on_step is not None:
      on_step(step)
    rng = np.random.default_rng([config.seed, step])
    images = rng.standard_normal((config.batch_size, config.image_size, config.image_size, 3), np.float32)
    labels = rng.integers(0, NUM_CLASSES, config.batch_size).astype(np.int32)
    rows = slice(process_index * b, (process_index + 1) * b)
    yield {"image": images[rows], "label": labels[rows]}
    step += 1


def eval_batches(config, info_, process_index=0, process_count=1):
  rng = np.random.default_rng([config.seed, 99])
  images = rng.standard_normal((NUM_EVAL, config.image_size, config.image_size, 3), np.float32)
  labels = rng.integers(0, NUM_CLASSES, NUM_EVAL).astype(np.int32)
  b = config.eval_batch_size
  for start in range(0, NUM_EVAL, b):
    idx = np.arange(start, start + b)
    mask = (idx < NUM_EVAL).astype(np.float32)
    idx = np.minimum(idx, NUM_EVAL - 1)
    rows = slice(process_index * b // process_count, (process_index + 1) * b // process_count)
    yield {"image": images[idx][rows], "label": labels[idx][rows], "mask": mask[rows]}


def use_in_memory_data(trainer, process_index=0, process_count=1, on_step=None):
  """Points `trainer` at the in-memory source (returns the originals, to restore)."""
  saved = (trainer.dataset_info, trainer.train_batches, trainer.eval_batches)
  trainer.dataset_info = info
  trainer.train_batches = lambda c, i, s: train_batches(c, i, s, process_index, process_count, on_step)
  trainer.eval_batches = lambda c, i: eval_batches(c, i, process_index, process_count)
  return saved


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
