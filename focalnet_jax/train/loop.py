"""Sharded training and evaluation: `train_and_evaluate(config, workdir)`.

One pure train step, jitted over a ('data', 'fsdp') mesh with the train state donated:
mixup/cutmix on device, forward/backward (optionally over micro-batches), clipped AdamW,
optional EMA. The state is a plain dict {'step', 'params', 'opt_state'[, 'ema_params']},
created already sharded (`jax.eval_shape` of init -> FSDP shardings -> `jax.jit(init,
out_shardings=...)`). Randomness is `fold_in(base_key, step)` and the data iterator starts at
the restored step, so a resumed run continues exactly as an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from focalnet_jax import checkpoint
from focalnet_jax import data as data_lib
from focalnet_jax.train import runlog
from focalnet_jax import evaluation
from focalnet_jax.model import variants
from focalnet_jax.train import mixup, optim, sharding

State = dict[str, Any]
HEAD_PREFIX = "head/"

# Set by the SIGTERM handler; the loop then saves a checkpoint and returns.
_STOP = threading.Event()


def request_stop(*_: Any) -> None:
  """Asks the running loop to save and stop (what SIGTERM does)."""
  _STOP.set()


# --- the model and its description ----------------------------------------------------------


def model_overrides(config: ml_collections.ConfigDict, num_classes: int) -> dict[str, Any]:
  """The FocalNet fields the config sets (None = the variant's value), JSON-ready."""
  overrides = {k: v for k, v in config.model.to_dict().items() if k != "name" and v is not None}
  overrides.setdefault("num_classes", num_classes)
  return {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()}


def build_model(config: ml_collections.ConfigDict, num_classes: int):
  """(module, overrides) for the config's model with the dataset's class count."""
  overrides = model_overrides(config, num_classes)
  return variants.create_model(config.model.name, **overrides), overrides


# --- data ------------------------------------------------------------------------------------


def dataset_info(config: ml_collections.ConfigDict) -> data_lib.DatasetInfo:
  return data_lib.get_info(config)


def train_batches(config, info, start_step: int) -> Iterator[dict[str, np.ndarray]]:
  kw = dict(start_step=start_step, process_index=jax.process_index(), process_count=jax.process_count())
  if config.dataset == "synthetic":
    return data_lib.synthetic_iterator(config, info.num_classes, **kw)
  return data_lib.train_iterator(config, **kw)


def eval_batches(config, info) -> Iterator[dict[str, np.ndarray]]:
  kw = dict(process_index=jax.process_index(), process_count=jax.process_count())
  if config.dataset == "synthetic":
    return data_lib.synthetic_iterator(config, info.num_classes, eval=True, **kw)
  return data_lib.eval_iterator(config, **kw)


# --- the steps ------------------------------------------------------------------------------


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-example cross entropy against soft targets, in float32."""
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def make_train_step(
    model, tx: optax.GradientTransformation, config: ml_collections.ConfigDict, num_classes: int,
    schedule: optax.Schedule, micro_sharding: NamedSharding | None,
) -> Callable[[State, dict, jax.Array], tuple[State, dict]]:
  """The pure update: (state, batch, base_rng) -> (state, metrics as (sum, count) pairs)."""
  accum = config.grad_accum_steps
  skip_nonfinite = config.nonfinite == "skip"

  def loss_fn(params, images, targets, rng):
    logits = model.apply({"params": params}, images, train=True, rngs={"dropout": rng})
    return cross_entropy(logits, targets).mean()

  grad_fn = jax.value_and_grad(loss_fn)

  def step_fn(state: State, batch: dict, base_rng: jax.Array):
    step = state["step"]
    rng = jax.random.fold_in(base_rng, step)
    mix_rng, drop_rng = jax.random.split(rng)
    images, targets, _ = mixup.mix(
        mix_rng, batch["image"], batch["label"], num_classes=num_classes,
        mixup_alpha=config.mixup_alpha, cutmix_alpha=config.cutmix_alpha, prob=config.mixup_prob,
        switch_prob=config.mixup_switch_prob, label_smoothing=config.label_smoothing,
    )
    params = state["params"]
    loss, grads = sharding.accumulate_gradients(
        grad_fn, params, (images, targets), drop_rng, accum, micro_sharding)
    grad_norm = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    new_state = dict(state, step=step + 1, params=optax.apply_updates(params, updates), opt_state=opt_state)
    if "ema_params" in state:
      d = config.ema_decay
      new_state["ema_params"] = jax.tree.map(
          lambda e, p: d * e + (1.0 - d) * p, state["ema_params"], new_state["params"]
      )
    n = jnp.asarray(batch["label"].shape[0], jnp.float32)
    one = jnp.ones((), jnp.float32)
    step_metrics = {"loss": (loss * n, n), "grad_norm": (grad_norm, one), "lr": (schedule(step), one)}
    if skip_nonfinite:
      # Decided on device (no host sync): a bad step keeps params, moments and EMA as they were,
      # and stays out of the loss and grad_norm averages so the host check passes.
      ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
      new_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state, state)
      new_state["step"] = step + 1
      okf = ok.astype(jnp.float32)
      step_metrics["loss"] = (jnp.where(ok, loss * n, 0.0), n * okf)
      step_metrics["grad_norm"] = (jnp.where(ok, grad_norm, 0.0), okf)
      step_metrics["skipped_steps"] = (1.0 - okf, one)
    return new_state, step_metrics

  return step_fn


def evaluate_split(eval_step, params, config, info, batch_sharding: NamedSharding) -> dict[str, float]:
  """One exact pass over the eval split: every real example counted once (padding masked)."""
  try:
    return evaluation.evaluate(eval_step, params, eval_batches(config, info), batch_sharding)
  except ValueError as e:
    raise ValueError(f"Evaluating on {config.dataset!r} split {config.eval_split!r}: {e}") from e


# --- state creation, fine-tuning, checkpoints ---------------------------------------------


def _flat(tree: Any) -> dict[str, Any]:
  return {"/".join(str(getattr(k, "key", k)) for k in path): v
          for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def load_pretrained(init_from: str, abstract_params: Any, fresh_params: Any, shardings: Any) -> Any:
  """Params of `init_from` placed onto `shardings`; a head of another shape keeps `fresh_params`'.

  Any other missing key, extra key or shape mismatch is an error naming them.
  """
  loaded, meta = checkpoint.load_params(init_from)
  want, got = _flat(abstract_params), _flat(loaded)
  missing = sorted(set(want) - set(got))
  extra = sorted(set(got) - set(want))
  mismatched = sorted(k for k in set(want) & set(got) if tuple(want[k].shape) != tuple(np.shape(got[k])))
  head = [k for k in mismatched if k.startswith(HEAD_PREFIX)]
  # A missing head (a checkpoint converted with num_classes=0) is re-initialised too.
  head += [k for k in missing if k.startswith(HEAD_PREFIX)]
  problems = [f"{k}: checkpoint {np.shape(got[k])} vs model {tuple(want[k].shape)}"
              for k in mismatched if k not in head]
  problems += [f"{k}: missing from the checkpoint" for k in missing if k not in head]
  problems += [f"{k}: in the checkpoint, not in the model" for k in extra if not k.startswith(HEAD_PREFIX)]
  if problems:
    raise ValueError(
        f"init_from={init_from!r} (model {meta.get('model')!r}) does not fit config.model:\n  "
        + "\n  ".join(problems)
    )
  if head:
    logging.warning(
        "init_from: the head of %s (%s) does not fit this model (%s); re-initialising the head.",
        init_from, ", ".join(f"{k} {np.shape(got[k]) if k in got else 'absent'}" for k in head),
        ", ".join(f"{k} {tuple(want[k].shape)}" for k in head),
    )
  fresh = _flat(fresh_params)
  flat_shard = _flat(shardings)
  leaves = {}
  for key in want:
    if key in head:
      leaves[key] = fresh[key]
    else:
      leaves[key] = jax.device_put(np.asarray(got[key], dtype=want[key].dtype), flat_shard[key])
  treedef = jax.tree.structure(abstract_params)
  order = list(_flat(abstract_params))
  return jax.tree.unflatten(treedef, [leaves[k] for k in order])


def _with_shardings(abstract: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


# --- the loop --------------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains per `config`, resuming from `workdir` if it holds checkpoints; returns final metrics.

  The returned dict holds the last eval metrics (`top1`, `top5`, `loss`, and `ema_*` with EMA),
  the last train averages as `train_*`, `step`, `preempted` (1.0 if SIGTERM stopped it) and,
  with nonfinite='skip', `skipped_steps` (updates skipped since this process started).
  """
  workdir = os.path.abspath(workdir)
  is_main = jax.process_index() == 0
  if config.dataset == "digits" and config.data_dir is None:
    config = config.copy_and_resolve_references()
    config.data_dir = os.path.join(workdir, "data")  # the quickstart's data lives with its run
  info = dataset_info(config)
  sched = optim.resolve_schedule(config, info.num_train)
  if config.nonfinite not in ("stop", "skip"):
    raise ValueError(f"nonfinite={config.nonfinite!r} must be 'stop' or 'skip'.")
  model, overrides = build_model(config, info.num_classes)
  model.check_image_size(config.image_size, config.image_size)
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
  n_dev = mesh.devices.size
  for name, b in (("batch_size", config.batch_size), ("eval_batch_size", config.eval_batch_size)):
    unit = n_dev * (config.grad_accum_steps if name == "batch_size" else 1)
    if b % unit:
      nearest = sorted({max(unit, b // unit * unit), -(-b // unit) * unit})
      raise ValueError(
          f"{name}={b} must be divisible by the {n_dev} mesh devices"
          + (f" x grad_accum_steps={config.grad_accum_steps}" if name == "batch_size" else "")
          + f"; nearest valid values: {', '.join(map(str, nearest))} (--config.{name}=...)."
      )
  if is_main:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  logging.info("Mesh %s over %d devices (%d processes); %s; %s", dict(mesh.shape), n_dev,
               jax.process_count(), config.model.name, sched)

  lr_fn = optim.lr_schedule(sched)
  tx = optim.make_optimizer(config, lr_fn)
  base_rng = jax.random.PRNGKey(config.seed)
  init_rng, train_rng = jax.random.split(base_rng)
  size = config.image_size
  use_ema = config.ema_decay > 0

  def init_fn(rng):
    dummy = jnp.zeros((1, size, size, 3), jnp.float32)
    params = model.init({"params": rng, "dropout": rng}, dummy, train=False)["params"]
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
    if use_ema:
      state["ema_params"] = params
    return state

  batch_sh = sharding.batch_sharding(mesh)
  repl = sharding.replicated(mesh)
  with jax.set_mesh(mesh):
    abstract = jax.eval_shape(init_fn, init_rng)
    state_sh = sharding.tree_shardings(abstract, mesh, config.fsdp_min_size)
    abstract_sh = _with_shardings(abstract, state_sh)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract["params"]))
    logging.info("%s: %s parameters (%s).", config.model.name, f"{n_params:,}",
                 ", ".join(f"{k}={v}" for k, v in overrides.items()))

    ckpt_dir = os.path.join(workdir, "checkpoints")
    mngr = checkpoint.manager(ckpt_dir, max_to_keep=config.keep_checkpoints, create=True,
                              enable_async_checkpointing=config.async_checkpoints)
    latest = mngr.latest_step()
    if latest is not None:
      try:
        restored = mngr.restore(latest, args=ocp.args.Composite(
            **{checkpoint.STATE: ocp.args.StandardRestore(abstract_sh)}))
      except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types
        earlier = sorted(s for s in mngr.all_steps() if s < latest)
        mngr.close()
        raise ValueError(
            f"Cannot resume from {os.path.join(ckpt_dir, str(latest))} ({checkpoint.error_summary(e)}). "
            "It is truncated or corrupt, or was written "
            "by a run with another model or optimizer config (compare config.json in the workdir). "
            + (f"To resume from step {earlier[-1]} instead, move {os.path.join(ckpt_dir, str(latest))} "
               "out of the way" if earlier else "To start afresh, use a new --workdir")
            + "; nothing was deleted."
        ) from e
      state = restored[checkpoint.STATE]
      logging.info("Resumed from %s at step %d.", ckpt_dir, latest)
    else:
      state = jax.jit(init_fn, out_shardings=state_sh)(init_rng)
      if config.init_from:
        params = load_pretrained(config.init_from, abstract["params"], state["params"], state_sh["params"])
        state["params"] = params
        if use_ema:
          state["ema_params"] = jax.tree.map(jnp.copy, params)
        logging.info("Initialised params from %s.", config.init_from)
    start_step = int(jax.device_get(state["step"]))

    micro_sh = NamedSharding(mesh, P(None, sharding.AXES))
    step_fn = make_train_step(model, tx, config, info.num_classes, lr_fn, micro_sh)
    metric_names = ("loss", "grad_norm", "lr") + (("skipped_steps",) if config.nonfinite == "skip" else ())
    metric_sh = {k: (repl, repl) for k in metric_names}
    train_step = jax.jit(step_fn, in_shardings=(state_sh, {"image": batch_sh, "label": batch_sh}, repl),
                         out_shardings=(state_sh, metric_sh), donate_argnums=(0,))
    batch_abstract = {
        "image": jax.ShapeDtypeStruct((config.batch_size, size, size, 3), jnp.float32, sharding=batch_sh),
        "label": jax.ShapeDtypeStruct((config.batch_size,), jnp.int32, sharding=batch_sh),
    }
    t0 = time.time()
    compiled = train_step.lower(abstract_sh, batch_abstract, jax.ShapeDtypeStruct((2,), jnp.uint32)).compile()
    logging.info("Compiled the train step in %.1fs.", time.time() - t0)
    try:
      mem = compiled.memory_analysis()
      if mem is not None:
        logging.info("Train step memory per device: arguments %.1f MiB, outputs %.1f MiB, temporaries %.1f MiB.",
                     mem.argument_size_in_bytes / 2**20, mem.output_size_in_bytes / 2**20,
                     mem.temp_size_in_bytes / 2**20)
    except Exception:  # noqa: BLE001 - not every backend implements it
      pass
    params_finite = jax.jit(lambda p: jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(p)])),
                            out_shardings=repl)
    eval_step = jax.jit(evaluation.make_eval_step(evaluation.model_logits_fn(model), info.num_classes),
                        out_shardings=repl)

    meta = {"model": config.model.name, "model_overrides": overrides,
            "config": json.loads(config.to_json_best_effort()),
            "image_size": size, "num_classes": info.num_classes, "class_names": list(info.class_names),
            "schedule": dataclasses.asdict(sched)}
    writer = runlog.Writer(workdir, enabled=is_main)
    eval_every = sched.steps_per_epoch if config.eval_every_steps < 0 else config.eval_every_steps
    total = sched.total_steps
    batches = train_batches(config, info, start_step)

    pending: list[tuple[int, dict]] = []
    last_saved = latest
    last_train: dict[str, float] = {}
    last_eval: dict[str, float] = {}
    skipped_total = 0  # updates skipped (nonfinite='skip') since this process started
    preempted = False
    t_last, s_last = time.time(), start_step

    def flush(step: int) -> None:
      """Pulls the pending metrics in one transfer, checks them, logs the averages."""
      nonlocal pending, last_train, t_last, s_last, skipped_total
      if not pending:
        return
      steps, host = zip(*jax.device_get(pending))
      pending = []
      for s, m in zip(steps, host):
        for key, (total_, _) in m.items():
          if not np.isfinite(total_):
            mngr.wait_until_finished()
            raise FloatingPointError(
                f"Non-finite {key} ({total_}) at step {s}. Last good checkpoint: "
                + (f"step {last_saved} in {ckpt_dir}" if last_saved is not None else "none")
                + ". Lower base_lr, raise warmup_epochs, or check the data; the run resumes from that "
                "checkpoint when restarted (or set nonfinite='skip' to skip such updates)."
            )
      sums = {k: (sum(m[k][0] for m in host), sum(m[k][1] for m in host)) for k in host[0]}
      last_train = runlog.average(sums)
      if "skipped_steps" in sums:
        skipped = int(round(float(sums["skipped_steps"][0])))
        last_train["skipped_steps"] = float(skipped)  # a count per log interval, not a mean
        skipped_total += skipped
        if skipped:
          logging.warning("Skipped %d update(s) with a non-finite loss or gradient in steps %d-%d.",
                          skipped, s_last + 1, step)
      now = time.time()
      rate = (step - s_last) * config.batch_size / max(now - t_last, 1e-9)
      eta = (total - step) * (now - t_last) / max(step - s_last, 1)
      t_last, s_last = now, step
      writer.write(step, {**last_train, "img_per_s": rate}, "train")
      if is_main:
        logging.info(runlog.console_line(step, total, sched.steps_per_epoch, last_train, rate, eta))

    def save(step: int) -> None:
      nonlocal last_saved
      # The loss and gradients were checked; an update can still overflow the params. One
      # reduction per checkpoint keeps non-finite params off disk.
      if not bool(jax.device_get(params_finite(state["params"]))):
        mngr.wait_until_finished()
        raise FloatingPointError(
            f"Non-finite params at step {step}; not saved. Last good checkpoint: "
            + (f"step {last_saved} in {ckpt_dir}" if last_saved is not None else "none")
            + ". Lower base_lr or raise warmup_epochs; the run resumes from that checkpoint when restarted."
        )
      mngr.save(step, args=ocp.args.Composite(
          **{checkpoint.STATE: ocp.args.StandardSave(state), checkpoint.META: ocp.args.JsonSave(meta)}),
          force=True)
      last_saved = step

    def run_eval(step: int) -> None:
      nonlocal last_eval, t_last
      t = time.time()
      last_eval = evaluate_split(eval_step, state["params"], config, info, batch_sh)
      if use_ema:
        ema = evaluate_split(eval_step, state["ema_params"], config, info, batch_sh)
        last_eval.update({f"ema_{k}": v for k, v in ema.items() if k != "num_examples"})
      writer.write(step, last_eval, "eval")
      t_last += time.time() - t  # img/s and ETA measure training only
      if is_main:
        logging.info("eval at step %d (%d examples, %.1fs): %s", step, last_eval["num_examples"],
                     time.time() - t, " ".join(f"{k} {v:.4f}" for k, v in last_eval.items() if k != "num_examples"))

    old_handler = None
    if threading.current_thread() is threading.main_thread():
      old_handler = signal.signal(signal.SIGTERM, request_stop)
    _STOP.clear()
    try:
      step = start_step
      while step < total:
        batch = sharding.to_global(next(batches), batch_sh, ("image", "label"))
        state, step_metrics = compiled(state, batch, train_rng)
        step += 1
        pending.append((step, step_metrics))
        stop = _STOP.is_set()
        if jax.process_count() > 1:
          # Every process must take the same decision, at the same step: agree at log steps.
          stop = step % config.log_every_steps == 0 and bool(
              np.any(multihost_utils.process_allgather(np.asarray(stop))))
        save_now = step % config.checkpoint_every_steps == 0 or step == total or stop
        if step % config.log_every_steps == 0 or save_now:
          flush(step)  # also checks the loss is finite before anything is saved
        if save_now:
          save(step)
        if stop:
          preempted = True
          mngr.wait_until_finished()
          logging.warning("SIGTERM: saved step %d to %s; stopping. Rerun the same command to resume.",
                          step, ckpt_dir)
          break
        if (eval_every > 0 and step % eval_every == 0) or step == total:
          run_eval(step)
      if start_step >= total and not last_eval:
        run_eval(start_step)
    finally:
      mngr.wait_until_finished()
      mngr.close()
      writer.close()
      if old_handler is not None:
        signal.signal(signal.SIGTERM, old_handler)

  result = {**last_eval, **{f"train_{k}": v for k, v in last_train.items()}}
  result["step"] = float(jax.device_get(state["step"]))
  result["preempted"] = float(preempted)
  if config.nonfinite == "skip":
    result["skipped_steps"] = float(skipped_total)
  return result
