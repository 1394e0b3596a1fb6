"""Datasets held in memory (`ArrayData`, the digits without TensorFlow) keep the trainer's
contract: batches a pure function of (seed, step, process), exact resume, every eval example once."""
from __future__ import annotations

import sys

import numpy as np
import pytest

import train_utils
from configs import quickstart
from focalnet_jax import data
from focalnet_jax.data import transforms_np


@pytest.fixture(scope="module")
def digits():
  config = quickstart.get_config()
  return config, data.digits_data(config)


def test_digits_in_memory_are_the_folder_split_with_the_recipe_applied(digits):
  config, d = digits
  assert d.info(config) == data.DatasetInfo(10, 1437, 360, tuple(str(i) for i in range(10)))
  batch = next(d.train_batches(config))
  assert batch["image"].shape == (64, 16, 16, 3) and batch["image"].dtype == np.float32
  # Normalised with the config's mean/std: black is (0 - mean) / std in every channel.
  black = (0.0 - np.asarray(config.aug.mean)) / np.asarray(config.aug.std)
  np.testing.assert_allclose(batch["image"].min(axis=(0, 1, 2)), black, rtol=1e-5)
  # Random crops differ between epochs for the same example, and batches are a pure function of the step.
  steps_per_epoch = 1437 // 64
  again = next(d.train_batches(config, start_step=0))
  np.testing.assert_array_equal(batch["image"], again["image"])
  later = next(d.train_batches(config, start_step=steps_per_epoch))
  assert not np.array_equal(batch["label"], later["label"])  # a new permutation each epoch


def test_resume_and_processes_see_the_uninterrupted_global_batches(digits):
  config, d = digits
  straight = d.train_batches(config)
  batches = [next(straight) for _ in range(25)]  # across the first epoch boundary (22 steps)
  resumed = next(d.train_batches(config, start_step=24))
  np.testing.assert_array_equal(resumed["image"], batches[24]["image"])
  halves = [next(d.train_batches(config, start_step=24, process_index=p, process_count=2)) for p in (0, 1)]
  np.testing.assert_array_equal(np.concatenate([h["image"] for h in halves]), batches[24]["image"])
  np.testing.assert_array_equal(np.concatenate([h["label"] for h in halves]), batches[24]["label"])


def test_eval_counts_every_example_once_over_processes(digits):
  config, d = digits
  labels = []
  for p in (0, 1):
    for batch in d.eval_batches(config, process_index=p, process_count=2):
      labels.extend(batch["label"][batch["mask"] > 0])
  assert len(labels) == 360
  np.testing.assert_array_equal(np.bincount(labels), np.bincount(d.eval[1]))


def test_digits_without_tensorflow_are_read_in_memory(monkeypatch, caplog):
  monkeypatch.setitem(sys.modules, "tensorflow", None)  # as on a machine without TF
  assert not data.has_tensorflow()
  dataset = data.from_config(quickstart.get_config())
  assert isinstance(dataset, data.ArrayData) and dataset.augment
  assert "TensorFlow is not installed" in caplog.text


def test_recipe_steps_that_need_tensorflow_are_errors_not_skipped(digits):
  config, d = digits
  config = config.copy_and_resolve_references()
  config.aug.randaug_num_ops = 2
  with pytest.raises(ValueError, match=r"RandAugment .* run only in the tf.data pipeline"):
    next(d.train_batches(config))


def test_rrc_window_stays_inside_and_follows_scale_and_ratio():
  rng = np.random.default_rng(0)
  for _ in range(200):
    top, left, h, w = transforms_np.rrc_window(rng, 30, 40, (0.08, 1.0), (3 / 4, 4 / 3))
    assert 0 <= top and top + h <= 30 and 0 <= left and left + w <= 40 and h > 0 and w > 0
  # Nothing fits a 1x50 strip at aspect <= 4/3: the fallback is the centred, aspect-clamped crop.
  assert transforms_np.rrc_window(rng, 1, 50, (0.9, 1.0), (3 / 4, 4 / 3)) == (0, 24, 1, 1)


def test_eval_transform_resizes_the_shorter_side_and_centre_crops():
  config = train_utils.tiny_config(image_size=8, crop_ratio=0.5, interpolation="bilinear")
  image = np.zeros((40, 20, 3), np.uint8)
  image[18:22, 8:12] = 255  # a white square in the middle survives the centre crop
  out = transforms_np.eval_transform(image, config)
  assert out.shape == (8, 8, 3)
  white = (1.0 - np.asarray(config.aug.mean)) / np.asarray(config.aug.std)
  np.testing.assert_allclose(out[4, 4], white, rtol=1e-2)
