"""The pure training update: (state, batch, base_rng) -> (state, metrics).

One step is: the per-image augmentations of uint8 batches (`data.device_augment`; float32
batches arrive ready), mixup/cutmix and label smoothing on device, forward and backward (optionally over
micro-batches, `accumulate_gradients`), clipped AdamW (`optim`), and the EMA of the weights. The
state is a plain dict {'step', 'params', 'opt_state'[, 'ema_params']}; metrics are (sum, count)
pairs, divided on the host. Randomness is `fold_in(base_rng, step)`, so a resumed run draws
exactly what an uninterrupted one would.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import NamedSharding

from focalnet_jax.data import device_augment
from focalnet_jax.train import mixup

State = dict[str, Any]
_AUGMENT_STREAM = 2  # fold_in(step key, this): the per-example augmentation keys, apart from mixup's and dropout's
StepFn = Callable[[State, dict, jax.Array], tuple[State, dict]]


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-example cross entropy against soft targets, in float32."""
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def accumulate_gradients(
    value_and_grad_fn, params: Any, batch: tuple[jax.Array, ...], rng: jax.Array, num_micro: int,
    micro_sharding: NamedSharding | None = None,
) -> tuple[jax.Array, Any]:
  """Mean loss and gradients of `value_and_grad_fn(params, *batch, rng)` over micro-batches.

  With num_micro = 1 this is one call on the whole batch. Otherwise the batch is cut into
  `num_micro` micro-batches that run one after another in a `lax.scan`, so only one
  micro-batch's activations are live: the update is that of the whole batch (each
  micro-batch's loss is a mean, so their mean is the batch mean) with 1/num_micro of the
  activation memory. Micro-batch m takes examples m, m + num_micro, ..., so a batch
  sharded over devices is split where it lies (`micro_sharding` pins that layout); its
  dropout rng is `fold_in(rng, m)`.
  """
  if num_micro == 1:
    return value_and_grad_fn(params, *batch, rng)

  def split(x):
    if x.shape[0] % num_micro:
      raise ValueError(f"batch of {x.shape[0]} does not split into {num_micro} micro-batches.")
    x = x.reshape((x.shape[0] // num_micro, num_micro) + x.shape[1:]).swapaxes(0, 1)
    return x if micro_sharding is None else jax.lax.with_sharding_constraint(x, micro_sharding)

  def micro(carry, xs):
    loss_sum, grad_sum = carry
    i, *micro_batch = xs
    loss, grads = value_and_grad_fn(params, *micro_batch, jax.random.fold_in(rng, i))
    return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

  zeros = jax.tree.map(jnp.zeros_like, params)
  init = (jnp.zeros((), jnp.float32), zeros)
  (loss, grads), _ = jax.lax.scan(micro, init, (jnp.arange(num_micro),) + tuple(map(split, batch)))
  return loss / num_micro, jax.tree.map(lambda g: g / num_micro, grads)


def _keep_finite(new_state: State, state: State, loss, grad_norm, metrics: dict) -> tuple[State, dict]:
  """nonfinite='skip': decided on device (no host sync), a bad step keeps params, moments and
  EMA as they were, and stays out of the loss and grad_norm averages so the host check passes."""
  ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  kept = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state, state)
  kept["step"] = new_state["step"]
  okf = ok.astype(jnp.float32)
  loss_sum, n = metrics["loss"]
  metrics = dict(metrics, loss=(jnp.where(ok, loss_sum, 0.0), n * okf),
                 grad_norm=(jnp.where(ok, grad_norm, 0.0), okf), skipped_steps=(1.0 - okf, jnp.ones((), jnp.float32)))
  return kept, metrics


def make_train_step(
    model, tx: optax.GradientTransformation, config: ml_collections.ConfigDict, num_classes: int,
    schedule: optax.Schedule, micro_sharding: NamedSharding | None = None,
) -> StepFn:
  """The pure update: (state, batch, base_rng) -> (state, metrics as (sum, count) pairs).

  `config` supplies the recipe: mixup/cutmix/label smoothing fields, `grad_accum_steps`
  (micro-batches), `ema_decay` (used when the state has 'ema_params') and `nonfinite`.
  """
  def loss_fn(params, images, targets, rng):
    logits = model.apply({"params": params}, images, train=True, rngs={"dropout": rng})
    return cross_entropy(logits, targets).mean()

  grad_fn = jax.value_and_grad(loss_fn)

  def step_fn(state: State, batch: dict, base_rng: jax.Array) -> tuple[State, dict]:
    step = state["step"]
    step_rng = jax.random.fold_in(base_rng, step)
    mix_rng, drop_rng = jax.random.split(step_rng)
    images = batch["image"]
    if images.dtype == jnp.uint8:  # crops still to augment (flip, RandAugment, erasing) and normalise
      images = device_augment.augment_batch(jax.random.fold_in(step_rng, _AUGMENT_STREAM), images, config)
    images, targets, _ = mixup.mix(
        mix_rng, images, batch["label"], num_classes=num_classes,
        mixup_alpha=config.mixup_alpha, cutmix_alpha=config.cutmix_alpha, prob=config.mixup_prob,
        switch_prob=config.mixup_switch_prob, label_smoothing=config.label_smoothing,
    )
    params = state["params"]
    loss, grads = accumulate_gradients(grad_fn, params, (images, targets), drop_rng, config.grad_accum_steps,
                                       micro_sharding)
    grad_norm = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    new_state = dict(state, step=step + 1, params=optax.apply_updates(params, updates), opt_state=opt_state)
    if "ema_params" in state:
      d = config.ema_decay
      new_state["ema_params"] = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, state["ema_params"],
                                             new_state["params"])
    n = jnp.asarray(batch["label"].shape[0], jnp.float32)
    one = jnp.ones((), jnp.float32)
    metrics = {"loss": (loss * n, n), "grad_norm": (grad_norm, one), "lr": (schedule(step), one)}
    if config.nonfinite == "skip":
      new_state, metrics = _keep_finite(new_state, state, loss, grad_norm, metrics)
    return new_state, metrics

  return step_fn


def metric_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The keys of the metrics `make_train_step` returns for `config`."""
  return ("loss", "grad_norm", "lr") + (("skipped_steps",) if config.nonfinite == "skip" else ())
