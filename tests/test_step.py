"""The pure train step on its own: micro-batch accumulation, the loss it reports, the update
and the EMA, called directly (no trainer, no files)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import train_utils
from focalnet_jax.train import mixup, optim
from focalnet_jax.train import state as state_lib
from focalnet_jax.train import step as step_lib


def _linear_problem(seed=0):
  rng = np.random.default_rng(seed)
  params = {"w": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)}
  x = jnp.asarray(rng.normal(size=(12, 5)), jnp.float32)
  y = jnp.asarray(rng.normal(size=(12, 3)), jnp.float32)
  return params, x, y


def test_accumulated_gradients_equal_the_whole_batch():
  params, x, y = _linear_problem()
  value_and_grad = jax.value_and_grad(lambda p, x, y, key: jnp.mean((x @ p["w"] - y) ** 2))
  ref = value_and_grad(params, x, y, jax.random.key(0))
  for num_micro in (1, 3, 4):
    got = step_lib.accumulate_gradients(value_and_grad, params, (x, y), jax.random.key(0), num_micro)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, ref)
  with pytest.raises(ValueError, match="micro-batches"):
    step_lib.accumulate_gradients(value_and_grad, params, (x, y), jax.random.key(0), 5)


def test_each_micro_batch_draws_its_own_randomness():
  """Micro-batch m holds examples m, m + n, ... and gets the key fold_in(key, m): the loss that
  depends on the key is the mean of those n draws, not n copies of one."""
  params, x, y = _linear_problem(1)
  key = jax.random.key(7)

  def loss(p, x, y, k):
    return jnp.mean((x @ p["w"] - y) ** 2) + jax.random.normal(k, ())

  n = 3
  got_loss, got_grads = step_lib.accumulate_gradients(jax.value_and_grad(loss), params, (x, y), key, n)
  draws = [float(jax.random.normal(jax.random.fold_in(key, m), ())) for m in range(n)]
  assert len(set(draws)) == n  # distinct keys
  expected = np.mean([float(jnp.mean((x[m::n] @ params["w"] - y[m::n]) ** 2)) + draws[m] for m in range(n)])
  np.testing.assert_allclose(float(got_loss), expected, rtol=1e-5)
  # The noise has no gradient: the update is still the whole batch's.
  whole = jax.grad(lambda p: jnp.mean((x @ p["w"] - y) ** 2))(params)
  np.testing.assert_allclose(got_grads["w"], whole["w"], rtol=1e-5, atol=1e-6)


def test_train_step_loss_update_and_ema_follow_the_recipe():
  """One step of the real update: the reported loss is the label-smoothed cross entropy of the
  model's logits, the params move by the optimizer's update, and the EMA mixes them with decay d."""
  config = train_utils.tiny_config(mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=0.1, ema_decay=0.9,
                                   **{"model.drop_path_rate": 0.0})
  model, _ = state_lib.build_model(config, train_utils.NUM_CLASSES)
  sched = optim.resolve_schedule(config, train_utils.NUM_TRAIN)
  lr_fn = optim.lr_schedule(sched)
  tx = optim.make_optimizer(config, lr_fn)
  init = state_lib.make_init_fn(model, tx, config.image_size, use_ema=True)
  state = init(jax.random.key(0))
  data = train_utils.TinyData()
  batch = next(data.train_batches(config))
  step_fn = step_lib.make_train_step(model, tx, config, train_utils.NUM_CLASSES, lr_fn)
  new_state, metrics = jax.jit(step_fn)(state, batch, jax.random.key(1))

  logits = model.apply({"params": state["params"]}, batch["image"])
  targets = mixup.smooth_one_hot(batch["label"], train_utils.NUM_CLASSES, 0.1)
  loss = float(optax.softmax_cross_entropy(logits, targets).mean())
  loss_sum, count = metrics["loss"]
  assert float(count) == config.batch_size
  np.testing.assert_allclose(float(loss_sum) / float(count), loss, rtol=1e-5)
  assert int(new_state["step"]) == 1 and float(metrics["lr"][0]) == pytest.approx(float(lr_fn(0)))

  grads = jax.grad(lambda p: optax.softmax_cross_entropy(
      model.apply({"params": p}, batch["image"]), targets).mean())(state["params"])
  updates, _ = tx.update(grads, state["opt_state"], state["params"])
  expected = optax.apply_updates(state["params"], updates)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), new_state["params"], expected)
  jax.tree.map(lambda e, p0, p1: np.testing.assert_allclose(e, 0.9 * p0 + 0.1 * p1, rtol=1e-5, atol=1e-7),
               new_state["ema_params"], state["params"], new_state["params"])
  assert set(step_lib.metric_names(config)) == set(metrics)
