r"""Throughput of the input pipeline: decoded and augmented images per second, per CPU core.

  python -m focalnet_jax.data.bench --config configs/default.py \
      --config.dataset=folder:/data/imagenet --config.batch_size=256
  python -m focalnet_jax.data.bench --config configs/default.py --make_jpegs /tmp/fake_imagenet

`--make_jpegs DIR` first writes a folder of synthetic ImageNet-like JPEGs (500x375, about
100 KB each, the typical size of an ImageNet training image) and benchmarks on it. Each
row runs the real `train_iterator` (or `eval_iterator`) with `data_threads` threads; with one
thread the rate is the per-core rate. The trainer needs about (model images/s) / (images/s per
core) cores per host to keep the accelerators fed.
"""
from __future__ import annotations

import os
import time

import numpy as np
from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
_MAKE_JPEGS = flags.DEFINE_string("make_jpegs", None, "Write synthetic ImageNet-like JPEGs here and use them.")
_NUM_JPEGS = flags.DEFINE_integer("num_jpegs", 512, "How many JPEGs --make_jpegs writes.")
_THREADS = flags.DEFINE_list("threads", ["1", str(os.cpu_count() or 1)], "data_threads values to measure.")
_BATCHES = flags.DEFINE_integer("batches", 8, "Timed batches per row (after one warm-up batch).")
_MODES = flags.DEFINE_list("modes", ["train", "eval"], "Pipelines to measure.")


def make_jpegs(root: str, num: int, size=(500, 375), classes: int = 4, seed: int = 0) -> str:
  """Writes `num` smooth random JPEGs (quality 90) as root/{train,validation}/<class>/; returns root."""
  from PIL import Image, ImageFilter
  rng = np.random.default_rng(seed)
  for split in ("train", "validation"):
    for i in range(num):
      path = os.path.join(root, split, f"c{i % classes}", f"{i:05d}.jpg")
      if os.path.exists(path):
        continue
      os.makedirs(os.path.dirname(path), exist_ok=True)
      # Upsampled noise plus fine noise: compresses like a photo (about 100 KB), unlike pure noise.
      coarse = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
      img = Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(2))
      arr = np.asarray(img).astype(np.int16) + rng.integers(-12, 13, (size[1], size[0], 3))
      Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=90)
  return root


def measure(config, mode: str, threads: int, batches: int) -> float:
  """Images per second of the `mode` pipeline with `threads` tf.data threads."""
  from focalnet_jax import data
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.data_threads = threads
  if mode == "train":
    it = data.train_iterator(config)
    batch = config.batch_size
  else:
    batch = config.eval_batch_size
    it = iter(_cycle_eval(config))
  next(it)  # warm-up: builds and optimises the pipeline
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  return batches * batch / (time.perf_counter() - start)


def _cycle_eval(config):
  from focalnet_jax import data
  while True:
    yield from data.eval_iterator(config)


def main(argv):
  del argv
  config = _CONFIG.value
  if _MAKE_JPEGS.value:
    root = make_jpegs(_MAKE_JPEGS.value, _NUM_JPEGS.value)
    with config.unlocked():
      config.dataset = f"folder:{root}"
      config.train_split, config.eval_split = "train", "validation"
  print(f"dataset {config.dataset}, image_size {config.image_size}, batch {config.batch_size}, "
        f"RandAugment n={config.aug.randaug_num_ops} m={config.aug.randaug_magnitude}, "
        f"{os.cpu_count()} CPUs visible, load average {os.getloadavg()[0]:.1f}")
  print(f"{'pipeline':<8} {'threads':>7} {'images/s':>10} {'images/s/thread':>16}")
  for mode in _MODES.value:
    for threads in (int(t) for t in _THREADS.value):
      rate = measure(config, mode, threads, _BATCHES.value)
      print(f"{mode:<8} {threads:>7} {rate:>10.1f} {rate / threads:>16.1f}")


if __name__ == "__main__":
  app.run(main)
