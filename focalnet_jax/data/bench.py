r"""Throughput of the input pipeline's host side: images per second, per CPU core.

  python -m focalnet_jax.data.bench --config configs/default.py \
      --config.dataset=folder:/data/imagenet --config.batch_size=256
  python -m focalnet_jax.data.bench --config configs/default.py --make_jpegs /tmp/photo_jpegs \
      --threads=1 --vs-timm

`--make_jpegs DIR` first writes a folder of ImageNet-like JPEGs cut from real photos
(`sample_jpegs`: longer side about 500 px, quality 88-95, a few grayscale; needs scikit-image)
and benchmarks on it. Each row runs the real `train_iterator` (or `eval_iterator`) with
`data_threads` threads, i.e. all the host does for the trainer; with one thread the rate is the
per-core rate. The trainer needs about (model images/s) / (images/s per core) cores per host to
keep the accelerators fed.

`--vs-timm` (needs timm) pins the process to one CPU and times, alternately for `--rounds`
rounds on the same files, our one-thread pipeline and timm's `create_transform` for the same
recipe (what one PyTorch DataLoader worker runs: PIL open, transform, collate), and prints the
ratio of each round, by wall time and by this process's CPU time (the per-core cost, which
other processes on a shared CPU disturb less).
"""
from __future__ import annotations

import gc
import os
import threading
import time

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
_MAKE_JPEGS = flags.DEFINE_string("make_jpegs", None, "Write ImageNet-like JPEGs cut from real photos here "
                                  "and use them.")
_NUM_JPEGS = flags.DEFINE_integer("num_jpegs", 512, "How many JPEGs per split --make_jpegs writes.")
_THREADS = flags.DEFINE_list("threads", ["1", str(os.cpu_count() or 1)], "data_threads values to measure.")
_BATCHES = flags.DEFINE_integer("batches", 8, "Timed batches per row (after one warm-up batch).")
_MODES = flags.DEFINE_list("modes", ["train", "eval"], "Pipelines to measure.")
_VS_TIMM = flags.DEFINE_bool("vs-timm", False, "On one pinned CPU, alternate our one-thread pipeline with "
                             "timm's transforms on the same files and print the ratio.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds of --vs-timm.")


def _batches(config, mode: str, threads: int):
  """(iterator over the `mode` pipeline's batches, batch size), `data_threads` = threads."""
  from focalnet_jax import data
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.data_threads = threads
  if mode == "train":
    return data.train_iterator(config), config.batch_size

  def cycle():
    while True:
      yield from data.eval_iterator(config)
  return cycle(), config.eval_batch_size


def _rate(it, batch: int, batches: int) -> float:
  return _rates(it, batch, batches)[0]


def _rates(it, batch: int, batches: int) -> tuple[float, float]:
  """(images per second of wall time, images per second of this process's CPU time)."""
  start, cpu = time.perf_counter(), time.process_time()
  for _ in range(batches):
    next(it)
  return batches * batch / (time.perf_counter() - start), batches * batch / (time.process_time() - cpu)


def measure(config, mode: str, threads: int, batches: int) -> float:
  """Images per second of the `mode` pipeline with `threads` tf.data threads."""
  it, batch = _batches(config, mode, threads)
  next(it)  # warm-up: builds and optimises the pipeline
  return _rate(it, batch, batches)


def _timm_transform(config, mode: str):
  """timm's `create_transform` for the config's recipe, and the split its files come from."""
  from focalnet_jax.tools.benchmark_runners import import_timm
  import_timm()
  import torch
  from PIL import Image, ImageOps
  from timm.data import create_transform

  torch.set_num_threads(1)
  # timm's PosterizeIncreasing at level 10 keeps 0 bits: PIL >= 11.3 refuses that, older PIL (and
  # our op) give black. Without this, timm's recipe raises on about one image in 200.
  posterize = ImageOps.posterize
  if not getattr(posterize, "zero_bits_black", False):
    def patched(img, bits):
      return Image.new(img.mode, img.size) if bits == 0 else posterize(img, bits)
    patched.zero_bits_black = True
    ImageOps.posterize = patched
  a = config.aug
  if mode == "train":
    policy = f"rand-m{a.randaug_magnitude:g}-mstd{a.randaug_magnitude_std:g}-inc1" if a.randaug_num_ops else None
    if a.randaug_num_ops not in (0, 2):
      raise ValueError("--vs-timm compares timm's 'rand-m*-mstd*-inc1' policy, which has 2 ops; set "
                       "aug.randaug_num_ops to 2 or 0.")
    t = create_transform(config.image_size, is_training=True, scale=tuple(a.rrc_scale), ratio=tuple(a.rrc_ratio),
                         hflip=0.5 if a.hflip else 0.0, color_jitter=None, auto_augment=policy,
                         interpolation=config.interpolation, re_prob=a.random_erase_prob, re_mode="pixel",
                         mean=tuple(a.mean), std=tuple(a.std))
    return t, config.train_split
  t = create_transform(config.image_size, is_training=False, crop_pct=config.crop_ratio,
                       interpolation=config.interpolation, mean=tuple(a.mean), std=tuple(a.std))
  return t, config.eval_split


def _timm_batches(config, mode: str):
  """timm's batches over the same files: one DataLoader worker's work (open, transform, collate)."""
  import torch
  from PIL import Image

  from focalnet_jax.data import folder, sources
  if not config.dataset.startswith("folder:"):
    raise ValueError("--vs-timm reads image files: use --config.dataset=folder:DIR or --make_jpegs DIR.")
  transform, split = _timm_transform(config, mode)
  paths = folder.scan_split(sources.folder_root(config.dataset), split, config.corrupt_images).paths
  batch = config.batch_size if mode == "train" else config.eval_batch_size
  i = 0
  while True:
    images = []
    for _ in range(batch):
      with open(paths[i % len(paths)], "rb") as f:
        images.append(transform(Image.open(f).convert("RGB")))
      i += 1
    yield torch.stack(images)


def _pin_one_cpu() -> int:
  """Pins this process (and the threads it starts from now on) to one CPU; returns it."""
  cpu = min(os.sched_getaffinity(0))
  os.sched_setaffinity(0, {cpu})
  return cpu


def vs_timm(config, mode: str, batches: int, rounds: int) -> None:
  """Rows for ours and timm's, alternating, one thread each, and the ratio of each round."""
  theirs = _timm_batches(config, mode)
  next(theirs)  # warm-up
  ratios = []
  for r in range(rounds):
    # A fresh pipeline each round, stopped before timm's turn: its prefetching and background
    # threads would otherwise run during timm's time, on the same CPU, and be counted as ours.
    threads = threading.active_count()
    ours, batch = _batches(config, mode, 1)
    next(ours)  # warm-up: builds and optimises the pipeline
    a, a_cpu = _rates(ours, batch, batches)
    ours.close()
    del ours
    gc.collect()
    while threading.active_count() > threads:  # the next epoch's pipeline, being started
      time.sleep(0.05)
    b, b_cpu = _rates(theirs, batch, batches)
    ratios.append((a / b, a_cpu / b_cpu))
    print(f"{mode:<8} {1:>7} {a:>10.1f} {a:>16.1f}   {a_cpu:.1f} images per CPU second")
    print(f"{'timm-' + mode:<8} {1:>7} {b:>10.1f} {b:>16.1f}   {b_cpu:.1f} images per CPU second; round {r + 1}: "
          f"ours / timm = {a / b:.2f}x (by CPU time {a_cpu / b_cpu:.2f}x)", flush=True)
  wall, cpu = [x for x, _ in ratios], [y for _, y in ratios]
  print(f"{mode}: ours / timm over {rounds} rounds: {min(wall):.2f}x - {max(wall):.2f}x "
        f"(by CPU time {min(cpu):.2f}x - {max(cpu):.2f}x)")


def main(argv):
  del argv
  config = _CONFIG.value
  cpu = _pin_one_cpu() if _VS_TIMM.value else None  # before TF or torch start their thread pools
  if _MAKE_JPEGS.value:
    from focalnet_jax.data.sample_jpegs import write_photo_jpegs
    root = write_photo_jpegs(_MAKE_JPEGS.value, _NUM_JPEGS.value)
    with config.unlocked():
      config.dataset = f"folder:{root}"
      config.train_split, config.eval_split = "train", "validation"
  print(f"dataset {config.dataset}, image_size {config.image_size}, batch {config.batch_size}, "
        f"RandAugment n={config.aug.randaug_num_ops} m={config.aug.randaug_magnitude}, "
        f"{os.cpu_count()} CPUs visible, load average {os.getloadavg()[0]:.1f}"
        + (f", pinned to CPU {cpu}" if cpu is not None else ""))
  print(f"{'pipeline':<8} {'threads':>7} {'images/s':>10} {'images/s/thread':>16}")
  for mode in _MODES.value:
    if _VS_TIMM.value:
      vs_timm(config, mode, _BATCHES.value, _ROUNDS.value)
      continue
    for threads in (int(t) for t in _THREADS.value):
      rate = measure(config, mode, threads, _BATCHES.value)
      print(f"{mode:<8} {threads:>7} {rate:>10.1f} {rate / threads:>16.1f}")


if __name__ == "__main__":
  app.run(main)
