"""The trainer end to end on CPU (8 devices): sharding invariance, exact resume after SIGTERM,
fine-tuning with a new head, and the real TFDS path on mocked ImageNet."""
from __future__ import annotations

import logging
import os
import signal

import jax
import numpy as np
import pytest

import train_utils
from focalnet_jax import checkpoint
from focalnet_jax import train as trainer
from focalnet_jax.train import state as state_lib


pytestmark = pytest.mark.usefixtures("compilation_cache")


def train(config, workdir, **hooks):
  """train_and_evaluate on the tiny in-memory dataset (hooks: see train_utils.TinyData)."""
  return trainer.train_and_evaluate(config, str(workdir), data=train_utils.TinyData(**hooks))


def _params(workdir):
  params, _ = checkpoint.load_params(os.path.join(workdir, "checkpoints"))
  return params


def _assert_trees_close(a, b, **tol):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol), a, b)


def test_data_by_fsdp_mesh_and_accumulation_match_one_device(tmp_path):
  """One step on a 2x4 (data x fsdp) mesh, also with 2 micro-batches, = one step on one device."""
  runs = {"1x1": (1, 1, 1), "2x4": (2, 4, 1), "2x4_accum2": (2, 4, 2)}
  results = {}
  for name, (d, f, accum) in runs.items():
    # No stochastic depth: micro-batches draw their own drop masks.
    config = train_utils.tiny_config(total_steps=1, grad_accum_steps=accum,
                                     **{"mesh.data": d, "mesh.fsdp": f, "model.drop_path_rate": 0.0})
    workdir = str(tmp_path / name)
    results[name] = (train(config, workdir), _params(workdir))
  m1, p1 = results["1x1"]
  for name in ("2x4", "2x4_accum2"):
    m, p = results[name]
    np.testing.assert_allclose(m["train_loss"], m1["train_loss"], rtol=1e-5)
    np.testing.assert_allclose(m["top1"], m1["top1"])
    _assert_trees_close(p, p1, rtol=1e-4, atol=1e-6)
  assert m1["num_examples"] == train_utils.NUM_EVAL  # padding masked, every example once


def test_sigterm_saves_and_resume_continues_exactly(tmp_path):
  """SIGTERM at step 6 of 9 saves cleanly; rerunning finishes as an uninterrupted run would."""
  config = train_utils.tiny_config(total_steps=9, checkpoint_every_steps=3, log_every_steps=2, ema_decay=0.5)
  straight = train(config, str(tmp_path / "straight"))

  def kill_at_6(step):
    if step == 5:  # the 6th batch is being read: stop after that step
      os.kill(os.getpid(), signal.SIGTERM)

  workdir = str(tmp_path / "killed")
  first = train(config, workdir, on_step=kill_at_6)
  assert first["preempted"] == 1.0 and first["step"] == 6
  assert checkpoint.manager(os.path.join(workdir, "checkpoints")).latest_step() == 6
  resumed = train(config, workdir)
  assert resumed["step"] == 9 and resumed["preempted"] == 0.0
  for key in ("loss", "top1", "ema_loss", "train_loss"):
    np.testing.assert_allclose(resumed[key], straight[key], rtol=1e-6)
  _assert_trees_close(_params(workdir), _params(str(tmp_path / "straight")), rtol=1e-6, atol=1e-8)


def test_init_from_reinitialises_a_head_of_another_size(tmp_path, caplog):
  config = train_utils.tiny_config(total_steps=1)
  model, overrides = state_lib.build_model(config, 7)  # a 7-class "pretrained" model
  params = model.init(jax.random.PRNGKey(1), np.zeros((1, 8, 8, 3), np.float32))["params"]
  pretrained = str(tmp_path / "pretrained")
  checkpoint.save(pretrained, {"params": params}, {"model": config.model.name, "model_overrides": overrides})

  config.init_from = pretrained
  with caplog.at_level(logging.WARNING):
    train(config, str(tmp_path / "ft"))
  assert "re-initialising the head" in caplog.text
  tuned = _params(str(tmp_path / "ft"))
  assert tuned["head"]["kernel"].shape == (8, train_utils.NUM_CLASSES)

  # Any other mismatch is an error naming the key and both shapes.
  params["norm"]["scale"] = np.ones(3, np.float32)
  other = str(tmp_path / "bad")
  checkpoint.save(other, {"params": params}, {"model": config.model.name, "model_overrides": overrides})
  config.init_from = other
  with pytest.raises(ValueError, match=r"norm/scale: checkpoint \(3,\) vs model \(8,\)"):
    train(config, str(tmp_path / "ft2"))


def test_non_finite_loss_stops_with_a_clear_message(tmp_path):
  config = train_utils.tiny_config(total_steps=3, base_lr=1e30, warmup_epochs=0.0, grad_clip_norm=0.0)
  with pytest.raises(FloatingPointError, match=r"Non-finite .* at step \d+\. Last good checkpoint: none"):
    train(config, str(tmp_path / "nan"))
  assert checkpoint.manager(str(tmp_path / "nan" / "checkpoints")).latest_step() is None


def test_end_to_end_on_mock_imagenet(tmp_path):
  """The real data path: TFDS imagenet2012 (mocked), train two steps, evaluate, write outputs."""
  tfds = pytest.importorskip("tensorflow_datasets")
  config = train_utils.tiny_config(total_steps=2, dataset="imagenet2012", eval_batch_size=8,
                                     # tfds' mock swaps the filesystem while building a dataset,
                                     # which a background checkpoint write would trip over.
                                     async_checkpoints=False)
  config.model.num_classes = None
  with tfds.testing.mock_data(num_examples=24):
    result = trainer.train_and_evaluate(config, str(tmp_path))  # the dataset the config names
  assert result["step"] == 2 and np.isfinite(result["loss"])
  assert result["num_examples"] == 24
  assert {"config.json", "metrics.jsonl", "checkpoints", "tb"} <= set(os.listdir(tmp_path))
  meta = checkpoint.read_meta(str(tmp_path / "checkpoints"))
  assert meta["model"] == "focalnet_tiny_srf" and meta["model_overrides"]["num_classes"] == 1000


def _jpeg_folder(root, n=32, classes=2):
  from PIL import Image
  rng = np.random.default_rng(0)
  for i in range(n):
    path = os.path.join(root, "train", f"c{i % classes}", f"{i:03d}.jpg")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = rng.integers(0, 256, (20 + i % 5, 24, 3), dtype=np.uint8)
    Image.fromarray(pixels).resize((24 + 2 * (i % 3), 20 + i % 5)).save(path, quality=90)
  return root


def test_sigterm_and_resume_through_the_pipeline_with_device_augmentation(tmp_path):
  """JPEG folder -> uint8 crops -> flip, RandAugment, normalise and erasing in the train step:
  SIGTERM during step 4 of 6 saves; the rerun ends as an uninterrupted run does."""
  pytest.importorskip("tensorflow")
  from focalnet_jax import data as data_lib

  class SigtermAt(data_lib.PipelineData):
    def __init__(self, at):
      self.at = at

    def train_batches(self, config, *, start_step=0, **kwargs):
      for step, batch in enumerate(super().train_batches(config, start_step=start_step, **kwargs), start_step):
        if step == self.at:
          os.kill(os.getpid(), signal.SIGTERM)
        yield batch

  root = _jpeg_folder(str(tmp_path / "jpegs"))
  config = train_utils.tiny_config(total_steps=6, checkpoint_every_steps=2, log_every_steps=2,
                                     dataset=f"folder:{root}", eval_split="train")
  assert config.aug.randaug_num_ops == 2 and config.aug.random_erase_prob > 0  # the recipe, on device
  straight = trainer.train_and_evaluate(config, str(tmp_path / "straight"), data=SigtermAt(-1))
  workdir = str(tmp_path / "killed")
  first = trainer.train_and_evaluate(config, workdir, data=SigtermAt(3))
  assert first["preempted"] == 1.0 and first["step"] == 4
  resumed = trainer.train_and_evaluate(config, workdir, data=SigtermAt(-1))
  assert resumed["step"] == 6
  for key in ("loss", "top1", "train_loss"):
    np.testing.assert_allclose(resumed[key], straight[key], rtol=1e-6)
  _assert_trees_close(_params(workdir), _params(str(tmp_path / "straight")), rtol=1e-6, atol=1e-8)
