"""AdamW with a per-step warmup + cosine schedule, decoupled weight decay masked by path.

`resolve_schedule` turns the final config (after command-line overrides) into step counts
and learning rates, so `--config.batch_size=256` rescales the learning rate and the steps.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections
import optax

from focalnet_jax.train import layer_decay


@dataclasses.dataclass(frozen=True)
class TrainingSchedule:
  """Step counts and learning rates derived from the final config and the dataset size (not an
  `optax.Schedule`, which `lr_schedule` makes of it)."""

  steps_per_epoch: int
  total_steps: int
  warmup_steps: int
  lr: float  # peak
  warmup_lr: float  # at step 0
  min_lr: float  # at the last step


def resolve_schedule(config: ml_collections.ConfigDict, num_train: int) -> TrainingSchedule:
  """steps and learning rates of the final config (lr scaled by batch_size / lr_base_batch_size)."""
  steps_per_epoch = num_train // config.batch_size
  if steps_per_epoch < 1:
    raise ValueError(
        f"batch_size={config.batch_size} is larger than the {num_train} training examples; "
        "lower --config.batch_size."
    )
  total = config.total_steps if config.total_steps > 0 else int(config.num_epochs * steps_per_epoch)
  warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), total)
  scale = config.batch_size / config.lr_base_batch_size
  return TrainingSchedule(
      steps_per_epoch=steps_per_epoch,
      total_steps=total,
      warmup_steps=warmup,
      lr=config.base_lr * scale,
      warmup_lr=config.warmup_lr * scale,
      min_lr=config.min_lr * scale,
  )


def lr_schedule(s: TrainingSchedule) -> optax.Schedule:
  """Linear warmup from warmup_lr to lr over warmup_steps, then cosine to min_lr at total_steps."""
  return optax.warmup_cosine_decay_schedule(
      init_value=s.warmup_lr,
      peak_value=s.lr,
      warmup_steps=s.warmup_steps,
      decay_steps=max(s.total_steps, s.warmup_steps + 1),
      end_value=s.min_lr,
  )


def decay_mask(params: Any) -> Any:
  """True where weight decay applies: not on 1-D params (norms, biases) nor layerscale gammas."""

  def decays(path, x) -> bool:
    name = str(getattr(path[-1], "key", path[-1]))
    return x.ndim > 1 and not name.startswith("gamma")

  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
  """Global-norm clipping, then AdamW (decoupled weight decay, masked by `decay_mask`), then the
  layer-wise learning-rate decay of `config.optim.layer_decay` (`layer_decay`; 1.0: none)."""
  parts = []
  if config.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  parts.append(
      optax.adamw(
          schedule,
          b1=config.adam_b1,
          b2=config.adam_b2,
          eps=config.adam_eps,
          weight_decay=config.weight_decay,
          mask=decay_mask,
      )
  )
  if config.optim.layer_decay != 1.0:
    parts.append(layer_decay.scale_by_layer(config.optim.layer_decay))
  return optax.chain(*parts)
