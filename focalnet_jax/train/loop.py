"""The training loop: `train_and_evaluate(config, workdir, *, data=None)`.

The loop wires the pieces of this package: the dataset (`focalnet_jax.data`), the state created
sharded or restored (`state`), the pure update jitted over a ('data', 'fsdp') mesh with the state
donated (`step`), exact evaluation (`eval_step`), checkpoints (`focalnet_jax.checkpoint`) and the
run log (`runlog`). Randomness is `fold_in(base_key, step)` and the data iterator starts at the
restored step, so a resumed run continues exactly as an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

from focalnet_jax import checkpoint
from focalnet_jax import data as data_lib
from focalnet_jax.train import eval_step as eval_lib
from focalnet_jax.train import config_check, optim, runlog, sharding, stopping
from focalnet_jax.train import state as state_lib
from focalnet_jax.train import step as step_lib
from focalnet_jax.train import workdir as workdir_lib

def compile_step(step_fn, state_sh, batch_sh, metric_names, abstract_sh, config, image_dtype):
  """The train step jitted over the mesh (state donated) and compiled ahead of the first batch, for
  train images of `image_dtype` (the dataset's `train_image_dtype`)."""
  repl = NamedSharding(batch_sh.mesh, P())
  train_step = jax.jit(step_fn, in_shardings=(state_sh, {"image": batch_sh, "label": batch_sh}, repl),
                       out_shardings=(state_sh, {k: (repl, repl) for k in metric_names}), donate_argnums=(0,))
  size = config.image_size
  batch = {
      "image": jax.ShapeDtypeStruct((config.batch_size, size, size, 3), image_dtype, sharding=batch_sh),
      "label": jax.ShapeDtypeStruct((config.batch_size,), jnp.int32, sharding=batch_sh),
  }
  t0 = time.time()
  compiled = train_step.lower(abstract_sh, batch, jax.ShapeDtypeStruct((2,), jnp.uint32)).compile()
  logging.info("Compiled the train step in %.1fs.", time.time() - t0)
  try:
    mem = compiled.memory_analysis()
    if mem is not None:
      logging.info("Train step memory per device: arguments %.1f MiB, outputs %.1f MiB, temporaries %.1f MiB.",
                   mem.argument_size_in_bytes / 2**20, mem.output_size_in_bytes / 2**20,
                   mem.temp_size_in_bytes / 2**20)
  except Exception:  # noqa: BLE001 - not every backend implements it
    pass
  return compiled


@dataclasses.dataclass
class Run:
  """One training run in progress: its state, the compiled steps, and what was logged and saved."""

  config: ml_collections.ConfigDict
  data: data_lib.Dataset
  sched: optim.TrainingSchedule
  mngr: Any
  writer: runlog.Writer
  state: dict
  train_step: Any
  eval_step: Any
  batch_sh: NamedSharding
  meta: dict
  last_saved: int | None  # the last step whose save was started
  pending: list = dataclasses.field(default_factory=list)
  last_train: dict = dataclasses.field(default_factory=dict)
  last_eval: dict = dataclasses.field(default_factory=dict)
  skipped_total: int = 0  # updates skipped (nonfinite='skip') since this process started
  clock: tuple[float, int] = (0.0, 0)  # (time, step) of the last log line
  intact: int | None = None  # the last step known committed to disk
  preemption_service: bool = False  # JAX's preemption service decides multi-process stops

  def __post_init__(self):
    self.is_main = jax.process_index() == 0
    self.params_finite = jax.jit(
        lambda p: jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(p)])),
        out_shardings=NamedSharding(self.batch_sh.mesh, P()))

  def check_saves(self, wait: bool = False) -> None:
    """A failed background save (a full disk) stops the run here, at the next step boundary,
    with one line; a finished one becomes the intact step. `wait`: first let writes finish."""
    if self.last_saved == self.intact:
      return
    done = wait or not self.mngr.is_saving_in_progress()  # read before the error check: no race
    checkpoint.check_saves(self.mngr, self.last_saved, self.intact, wait=wait)
    if done:
      self.intact = self.last_saved

  def _last_good(self) -> str:
    return (f"step {self.last_saved} in {self.mngr.directory}" if self.last_saved is not None else "none")

  def flush(self, step: int) -> None:
    """Pulls the pending metrics in one transfer, checks them, logs the averages."""
    if not self.pending:
      return
    steps, host = zip(*jax.device_get(self.pending))
    self.pending = []
    for s, m in zip(steps, host):
      for key, (total, _) in m.items():
        if not np.isfinite(total):
          self.mngr.wait_until_finished()
          raise FloatingPointError(
              f"Non-finite {key} ({total}) at step {s}. Last good checkpoint: {self._last_good()}. Lower "
              "base_lr, raise warmup_epochs, or check the data; the run resumes from that checkpoint when "
              "restarted (or set nonfinite='skip' to skip such updates).")
    sums = {k: (sum(m[k][0] for m in host), sum(m[k][1] for m in host)) for k in host[0]}
    self.last_train = runlog.average(sums)
    t_last, s_last = self.clock
    if "skipped_steps" in sums:
      skipped = int(round(float(sums["skipped_steps"][0])))
      self.last_train["skipped_steps"] = float(skipped)  # a count per log interval, not a mean
      self.skipped_total += skipped
      if skipped:
        logging.warning("Skipped %d update(s) with a non-finite loss or gradient in steps %d-%d.",
                        skipped, s_last + 1, step)
    now = time.time()
    rate = (step - s_last) * self.config.batch_size / max(now - t_last, 1e-9)
    eta = (self.sched.total_steps - step) * (now - t_last) / max(step - s_last, 1)
    self.clock = (now, step)
    self.writer.write(step, {**self.last_train, "img_per_s": rate}, "train")
    if self.is_main:
      logging.info(runlog.console_line(step, self.sched.total_steps, self.sched.steps_per_epoch,
                                       self.last_train, rate, eta))

  def save(self, step: int) -> None:
    # The loss and gradients were checked; an update can still overflow the params. One
    # reduction per checkpoint keeps non-finite params off disk.
    if not bool(jax.device_get(self.params_finite(self.state["params"]))):
      self.mngr.wait_until_finished()
      raise FloatingPointError(
          f"Non-finite params at step {step}; not saved. Last good checkpoint: {self._last_good()}. Lower "
          "base_lr or raise warmup_epochs; the run resumes from that checkpoint when restarted.")
    self.check_saves(wait=True)  # orbax waits for the previous save anyway; its failure is named here
    checkpoint.save_step(self.mngr, step, self.state, self.meta)
    self.last_saved = step

  def _evaluate(self, params) -> dict[str, float]:
    """One exact pass over the eval split: every real example counted once (padding masked)."""
    config = self.config
    batches = self.data.eval_batches(config, process_index=jax.process_index(),
                                     process_count=jax.process_count())
    try:
      return eval_lib.evaluate(self.eval_step, params, batches, self.batch_sh)
    except ValueError as e:
      raise ValueError(f"Evaluating on {config.dataset!r} split {config.eval_split!r}: {e}") from e

  def evaluate(self, step: int) -> None:
    t = time.time()
    self.last_eval = self._evaluate(self.state["params"])
    if "ema_params" in self.state:
      ema = self._evaluate(self.state["ema_params"])
      self.last_eval.update({f"ema_{k}": v for k, v in ema.items() if k != "num_examples"})
    self.writer.write(step, self.last_eval, "eval")
    self.clock = (self.clock[0] + time.time() - t, self.clock[1])  # img/s and ETA measure training only
    if self.is_main:
      logging.info("eval at step %d (%d examples, %.1fs): %s", step, self.last_eval["num_examples"],
                   time.time() - t,
                   " ".join(f"{k} {v:.4f}" for k, v in self.last_eval.items() if k != "num_examples"))

  def train(self, start_step: int, rng: jax.Array) -> bool:
    """Trains from `start_step` to the end (or a SIGTERM or Ctrl-C: then saves and returns True)."""
    config, total = self.config, self.sched.total_steps
    eval_every = self.sched.steps_per_epoch if config.eval_every_steps < 0 else config.eval_every_steps
    batches = self.data.train_batches(config, start_step=start_step, process_index=jax.process_index(),
                                      process_count=jax.process_count())
    self.clock = (time.time(), start_step)
    should_stop = stopping.StopAgreement(start_step, self.preemption_service)
    step = start_step
    while step < total:
      batch = sharding.to_global(next(batches), self.batch_sh, ("image", "label"))
      self.state, metrics = self.train_step(self.state, batch, rng)
      step += 1
      self.check_saves()
      self.pending.append((step, metrics))
      stop = should_stop(step, config.log_every_steps)
      save_now = step % config.checkpoint_every_steps == 0 or step == total or stop
      if step % config.log_every_steps == 0 or save_now:
        self.flush(step)  # also checks the loss is finite before anything is saved
      if save_now:
        self.save(step)
      if stop:
        self.check_saves(wait=True)
        logging.warning("Stop requested (SIGTERM or Ctrl-C): saved step %d to %s; stopping. Rerun the same "
                        "command to resume.", step, self.mngr.directory)
        return True
      if (eval_every > 0 and step % eval_every == 0) or step == total:
        self.evaluate(step)
    if start_step >= total and not self.last_eval:
      self.evaluate(start_step)
    return False


def _restore_or_create(config, workdir: str, mngr, init, abstract_sh, state_sh, abstract) -> tuple[dict, int | None]:
  """(state, latest step): resumed from the workdir's latest step, once its config is known to
  agree with this one (`config_check.check_resume`), or created (`init`: (init_fn, rng))."""
  latest = mngr.latest_step()
  if latest is None:
    return state_lib.create_state(*init, state_sh, abstract, config.init_from), None
  saved = (checkpoint.meta_of(mngr, latest) or {}).get("config")
  changes = config_check.check_resume(saved, config, workdir, latest)
  if changes:
    logging.warning("Resuming under a changed config (allow_config_change=True):\n  %s", "\n  ".join(changes))
  state, _ = checkpoint.restore_to_resume(mngr, abstract_sh)
  logging.info("Resumed from %s at step %d.", mngr.directory, latest)
  return state, latest


def _start(config, workdir: str, data: data_lib.Dataset, mesh) -> tuple[Run, int, jax.Array]:
  """Everything before the first step: checks, the mesh, the state (created or restored), the
  compiled steps, the checkpoint manager and the run log. config.json is written only once the
  state is restored or created, i.e. once the run is known to proceed."""
  info = data.info(config)
  sched = optim.resolve_schedule(config, info.num_train)
  model, overrides = state_lib.build_model(config, info.num_classes)
  config_check.check_with_model(config, model, mesh.devices.size)
  logging.info("Mesh %s over %d devices (%d processes); %s; %s", dict(mesh.shape), mesh.devices.size,
               jax.process_count(), config.model.name, sched)
  lr_fn = optim.lr_schedule(sched)
  tx = optim.make_optimizer(config, lr_fn)
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  init_fn = state_lib.make_init_fn(model, tx, config.image_size, use_ema=config.ema_decay > 0)
  batch_sh = sharding.batch_sharding(mesh)
  abstract = jax.eval_shape(init_fn, init_rng)
  state_sh = sharding.tree_shardings(abstract, mesh, config.fsdp_min_size)
  abstract_sh = state_lib.with_shardings(abstract, state_sh)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract["params"]))
  logging.info("%s: %s parameters (%s).", config.model.name, f"{n_params:,}",
               ", ".join(f"{k}={v}" for k, v in overrides.items()))
  mngr = checkpoint.manager(os.path.join(workdir, "checkpoints"), create=True, keep=config.keep_checkpoints,
                            async_save=config.async_checkpoints)
  try:
    state, latest = _restore_or_create(config, workdir, mngr, (init_fn, init_rng), abstract_sh, state_sh, abstract)
  except Exception:
    mngr.close()
    raise
  if jax.process_index() == 0:
    workdir_lib.write_config(workdir, config.to_json_best_effort(indent=2), latest or 0)
  step_fn = step_lib.make_train_step(model, tx, config, info.num_classes, lr_fn,
                                     NamedSharding(mesh, P(None, sharding.AXES)))
  train_step = compile_step(step_fn, state_sh, batch_sh, step_lib.metric_names(config), abstract_sh, config,
                            data.train_image_dtype)
  logits_fn = eval_lib.model_logits_fn(model, config.model.chunk_elements)
  eval_step = jax.jit(eval_lib.make_eval_step(logits_fn, info.num_classes), out_shardings=sharding.replicated(mesh))
  # The model's resolved values ('auto' made concrete); chunking is not a model field.
  execution = {k: getattr(model, k, config.model.get(k)) for k in config_check.EXECUTION_FIELDS}
  meta = {"model": config.model.name, "model_overrides": overrides, "execution": execution,
          "config": json.loads(config.to_json_best_effort()), "image_size": config.image_size,
          "num_classes": info.num_classes, "class_names": list(info.class_names),
          "schedule": dataclasses.asdict(sched)}
  run = Run(config, data, sched, mngr, runlog.Writer(workdir, enabled=jax.process_index() == 0),
            state, train_step, eval_step, batch_sh, meta, last_saved=latest, intact=latest)
  return run, int(jax.device_get(state["step"])), train_rng


@contextlib.contextmanager
def open_run(config: ml_collections.ConfigDict, workdir: str,
             data: data_lib.Dataset | None = None) -> Iterator[tuple[Run, int, jax.Array]]:
  """(run, start step, train rng) of a run set up in `workdir` (created, or resumed from its
  checkpoints) under its mesh, with SIGTERM and Ctrl-C asking it to save and stop; on exit,
  pending checkpoint writes finish and the run log is closed. The config is checked before
  anything is written, and process 0 holds the workdir's lock (`workdir.locked`) throughout.
  `train_and_evaluate` is this plus `run.train`."""
  config_check.check_values(config)
  workdir = os.path.abspath(workdir)
  data = data if data is not None else data_lib.from_config(config)
  config = data_lib.resolve_data_dir(config, workdir)  # digits data lives with its run; folders absolute
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
  with workdir_lib.locked(workdir, enabled=jax.process_index() == 0), stopping.stop_signals() as service, \
      jax.set_mesh(mesh):
    run, start_step, rng = _start(config, workdir, data, mesh)
    run.preemption_service = service
    try:
      yield run, start_step, rng
      run.check_saves(wait=True)  # a failed last save is an error, not a silent exit 0
    finally:
      with contextlib.suppress(Exception):  # a failed save was reported by check_saves, in one line
        run.mngr.wait_until_finished()
      run.mngr.close()
      run.writer.close()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       data: data_lib.Dataset | None = None) -> dict[str, float]:
  """Trains per `config`, resuming from `workdir` if it holds checkpoints; returns final metrics.

  `data`: the dataset to train on (default: the one `config.dataset` names; pass e.g. a
  `focalnet_jax.data.ArrayData` to train on arrays in memory).
  The returned dict holds the last eval metrics (`top1`, `top5`, `loss`, and `ema_*` with EMA),
  the last train averages as `train_*`, `step`, `preempted` (1.0 if SIGTERM or Ctrl-C stopped it) and,
  with nonfinite='skip', `skipped_steps` (updates skipped since this process started).
  """
  with open_run(config, workdir, data) as (run, start_step, rng):
    preempted = run.train(start_step, rng)
  result = {**run.last_eval, **{f"train_{k}": v for k, v in run.last_train.items()}}
  result["step"] = float(jax.device_get(run.state["step"]))
  result["preempted"] = float(preempted)
  if config.nonfinite == "skip":
    result["skipped_steps"] = float(run.skipped_total)
  return result
