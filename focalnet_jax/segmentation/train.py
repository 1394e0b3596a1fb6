r"""Trains a `SegmentationModel` on the synthetic squares task: the wiring of a dense-prediction
project (backbone + FPN + Semantic FPN head, pixel cross-entropy, AdamW, one jitted step), not a
benchmark. Swap `synthetic.squares_batch` for your dataset's batches and `init_backbone` for
converted or adapted backbone weights.

  python -m focalnet_jax.segmentation.train --config configs/segmentation/segmentation_tiny.py
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from focalnet_jax.segmentation import synthetic
from focalnet_jax.segmentation.segmentation import (SegmentationModel, confusion_matrix, mean_iou,
                                             pixel_cross_entropy)
from focalnet_jax.model.backbone import create_backbone


def build_model(config: ml_collections.ConfigDict) -> SegmentationModel:
  """The segmentation model `config` describes."""
  backbone = create_backbone(config.model.name, out_indices=tuple(config.model.out_indices),
                             **config.model.overrides.to_dict())
  return SegmentationModel(backbone, config.num_classes, config.fpn_channels, config.head_channels,
                           config.head_groups)


def make_step(model: SegmentationModel, optimizer: optax.GradientTransformation, ignore_index: int) -> Callable:
  """One pure update: (params, opt_state, images, labels, key) -> (params, opt_state, loss);
  `key` drives stochastic depth and dropout."""

  def loss_fn(params, images, labels, key):
    logits = model.apply({"params": params}, images, train=True, rngs={"dropout": key})
    return pixel_cross_entropy(logits, labels, ignore_index)

  def step(params, opt_state, images, labels, key):
    loss, grads = jax.value_and_grad(loss_fn)(params, images, labels, key)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return jax.jit(step, donate_argnums=(0, 1))


def train_and_evaluate(config: ml_collections.ConfigDict, log: Callable[[str], None] | None = None) -> dict[str, Any]:
  """Trains `config.steps` steps; returns {'losses': per step, 'eval_loss', 'eval_miou',
  'eval_pixel_accuracy'} (the eval batch is one the training never saw)."""
  model = build_model(config)
  size = tuple(config.image_size)
  batch = lambda step: synthetic.squares_batch(config.seed, step, config.batch_size, size, config.num_classes,
                                               config.ignore_index)
  params = model.init(jax.random.key(config.seed), jnp.zeros((1, *size, 3), jnp.float32))["params"]
  optimizer = optax.adamw(config.learning_rate, weight_decay=config.weight_decay)
  opt_state = optimizer.init(params)
  step_fn = make_step(model, optimizer, config.ignore_index)
  losses = []
  for step in range(config.steps):
    key = jax.random.fold_in(jax.random.key(config.seed + 1), step)
    params, opt_state, loss = step_fn(params, opt_state, *batch(step), key)
    losses.append(loss)
    if log and (step + 1) % config.log_every == 0:
      log(f"step {step + 1}: loss {float(loss):.4f}")
  losses = [float(v) for v in jax.device_get(losses)]
  images, labels = batch(config.steps)  # held out: training uses steps 0..steps-1
  logits = jax.jit(model.apply)({"params": params}, images)
  confusion = confusion_matrix(logits, labels, config.num_classes, config.ignore_index)
  return {
      "losses": losses,
      "eval_loss": float(pixel_cross_entropy(logits, labels, config.ignore_index)),
      "eval_miou": float(mean_iou(confusion)),
      "eval_pixel_accuracy": float(np.trace(confusion) / np.maximum(confusion.sum(), 1)),
  }


def main(argv: list[str]) -> None:
  from absl import app

  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  result = train_and_evaluate(_CONFIG.value, log=print)
  print(f"first loss {result['losses'][0]:.4f}, last {result['losses'][-1]:.4f}; held-out batch: loss "
        f"{result['eval_loss']:.4f}, mIoU {result['eval_miou']:.3f}, pixel accuracy {result['eval_pixel_accuracy']:.3f}")


if __name__ == "__main__":
  from absl import app
  from ml_collections import config_flags

  _CONFIG = config_flags.DEFINE_config_file("config", None, "Segmentation config file.", lock_config=True)
  app.run(main)
