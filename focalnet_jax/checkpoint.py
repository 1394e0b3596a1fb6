"""Checkpoints on disk: one orbax `CheckpointManager` layout for everything we write.

A checkpoint directory holds numbered steps; each step has two items:
  - 'state': a pytree. Training writes its whole train state; `python -m focalnet_jax.tools.convert`
    writes `{'params': ...}` at step 0. Either way `state['params']` holds the model params,
    and training with EMA also has `state['ema_params']`.
  - 'meta': JSON with at least `{'model': NAME, 'model_overrides': {...}}`, enough to rebuild
    the module (`focalnet_jax.create_model(meta['model'], **meta['model_overrides'])`).

Every array's checksum is saved in the meta ('checksums') and verified on every restore: one
flipped byte in a data file (bit rot, a bad copy), which the storage format may decode without
error, is named with its step instead of silently changing the weights; a run resuming from
such a step moves it aside (never deleting it) and resumes from the previous intact one.

Writing is atomic per step (orbax writes into `<step>.orbax-checkpoint-tmp` and renames it
when complete), so a crash during a save leaves earlier steps intact; the step lists ignore
such a leftover and the next save of that step replaces it. A step that cannot be read is
reported with its path and the earlier steps to fall back to; nothing here deletes one. Reading
never creates a directory (a mistyped path is an error, not a new empty checkpoint directory),
and a latest step rotated away by a running trainer while it is read is retried on the new latest.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

STATE = "state"
META = "meta"
CHECKSUMS = "checksums"


@jax.jit
def _digests(tree: Any) -> Any:
  """A uint32 checksum of each array's bits: sum_i mix(bits_i * odd_i) mod 2^32, where mix is a
  bijection and odd_i an odd multiplier of position i, so any change of one element changes the
  sum; integer sums do not depend on the order of reduction (sharded or not, any device)."""
  import jax.numpy as jnp

  def one(x):
    x = jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else jnp.asarray(x)
    if x.dtype == jnp.bool_:
      x = x.astype(jnp.uint8)
    width = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
    bits = jax.lax.bitcast_convert_type(x, width).reshape(-1).astype(jnp.uint32)
    i = jnp.arange(bits.size, dtype=jnp.uint32)
    h = bits * (i * jnp.uint32(2654435761) + jnp.uint32(0x9E3779B9) | jnp.uint32(1))
    return jnp.sum(h ^ (h >> 15), dtype=jnp.uint32)

  return jax.tree.map(one, tree)


def checksums(state: Any) -> dict[str, int]:
  """{array path: checksum} of a state (device arrays, sharded or not, or numpy arrays)."""
  flat = jax.tree_util.tree_leaves_with_path(jax.device_get(_digests(state)))
  return {jax.tree_util.keystr(p, simple=True, separator="/"): int(v) for p, v in flat}


def _on_host_if_local(x: Any) -> Any:
  """A restored array on one device, as numpy: its checksum is then computed wherever the caller's
  mesh puts it (a restore without a target lands on one device, inside a run's 8-device mesh).
  Sharded arrays stay where they are: they may span processes."""
  import jax.numpy as jnp
  import numpy as np

  if (isinstance(x, jax.Array) and x.is_fully_addressable and len(x.devices()) == 1
      and not jnp.issubdtype(x.dtype, jax.dtypes.prng_key)):
    return np.asarray(jax.device_get(x))
  return x


def verify(state: Any, meta: dict[str, Any], where: str) -> None:
  """Raises ValueError naming `where` and the arrays whose checksum differs from the saved one
  (checkpoints written before checksums existed have none to compare)."""
  saved = meta.get(CHECKSUMS)
  if not saved:
    return
  now = checksums(jax.tree.map(_on_host_if_local, state))
  bad = sorted(k for k, v in now.items() if k in saved and saved[k] != v)
  if bad:
    raise ChecksumMismatch(
        f"{where} is corrupt: the checksum of {len(bad)} array(s) ({', '.join(bad[:4])}"
        + (", ..." if len(bad) > 4 else "") + ") differs from the one saved with it (bit rot or a damaged "
        "copy changed its bytes). Its values cannot be trusted; load an earlier step, or copy or convert it again.")


class ChecksumMismatch(ValueError):
  """A restored step whose arrays differ from the checksums saved with them."""


class _ReadOnlyNotice(logging.Filter):
  """Drops orbax's warnings that a manager is read-only: that is how every reader opens one."""

  def filter(self, record: logging.LogRecord) -> bool:
    msg = str(record.msg)
    return not (msg.startswith("Given directory is read only") or "read_only=True, setting" in msg)


logging.getLogger("absl").addFilter(_ReadOnlyNotice())


def _registry() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
  """Our two items and their handlers (orbax's replacement for the deprecated `item_names`)."""
  registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
  state, meta = ocp.StandardCheckpointHandler(), ocp.JsonCheckpointHandler()
  for args, handler in ((ocp.args.StandardSave, state), (ocp.args.StandardRestore, state),
                        (ocp.args.JsonSave, meta), (ocp.args.JsonRestore, meta)):
    registry.add(STATE if handler is state else META, args, handler)
  return registry


def manager(directory: str | os.PathLike, *, create: bool = False, keep: int | None = None,
            async_save: bool = True) -> ocp.CheckpointManager:
  """A CheckpointManager over `directory` with our two items.

  `create=False` (reading) opens it read-only and never creates the directory; writers pass
  `create=True`. `keep`: how many of the latest steps to keep (None: all).
  """
  directory = os.path.abspath(os.fspath(directory))
  if not create and not os.path.isdir(directory):
    raise FileNotFoundError(
        f"No checkpoint directory {directory!r}: expected a training workdir's checkpoints/ or a "
        "directory written by `python -m focalnet_jax.tools.convert`. Check the path.")
  policy = ocp.checkpoint_managers.LatestN(keep) if keep is not None else None
  options = ocp.CheckpointManagerOptions(create=create, read_only=not create, preservation_policy=policy,
                                         enable_async_checkpointing=async_save,
                                         save_interval_steps=1 if create else 0)
  return ocp.CheckpointManager(directory, options=options, handler_registry=_registry())


def save_step(mngr: ocp.CheckpointManager, step: int, state: Any, meta: dict[str, Any]) -> None:
  """Starts saving `state` and `meta` (with every array's checksum) as step `step` (asynchronously
  if `mngr` is async)."""
  meta = {**meta, CHECKSUMS: checksums(state)}
  mngr.save(
      step,
      args=ocp.args.Composite(**{STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta)}),
      force=True,
  )


def save(directory: str | os.PathLike, state: Any, meta: dict[str, Any], step: int = 0) -> None:
  """Saves `state` and `meta` as step `step` of `directory`, waiting until the write is complete."""
  with manager(directory, create=True) as mngr:
    save_step(mngr, step, state, meta)
    mngr.wait_until_finished()


def _checked_step(mngr: ocp.CheckpointManager, directory: str, step: int | None) -> int:
  steps = mngr.all_steps()
  if not steps:
    raise FileNotFoundError(
        f"No checkpoint found in {directory!r}: expected numbered step directories written by "
        "train.py or `python -m focalnet_jax.tools.convert`. Check the path."
    )
  if step is None:
    return max(steps)
  if step not in steps:
    raise FileNotFoundError(f"Checkpoint {directory!r} has no step {step}; it has steps {sorted(steps)}.")
  return step


def _restore_latest(mngr: ocp.CheckpointManager, requested: int | None, step: int, args) -> tuple[Any, int]:
  """(restored, step). When the latest step was asked for and a running trainer saved a newer one
  while it was read (and is deleting this one: its directory may still be there, half removed),
  the new latest step is read instead (a few times at most)."""
  attempts = 8
  for attempt in range(attempts):
    try:
      return mngr.restore(step, args=args), step
    except Exception:  # noqa: BLE001 - orbax raises many types; re-raised unless a newer step exists
      if requested is not None or attempt == attempts - 1:
        raise
      mngr.reload()
      steps = mngr.all_steps()
      if not steps or max(steps) <= step:
        raise
      step = max(steps)
  raise AssertionError("unreachable")


def error_summary(e: BaseException, limit: int = 300) -> str:
  """`Type: first line` of an orbax/tensorstore error, without the (long) tensorstore spec."""
  text = str(e).split(" [tensorstore_spec=")[0].strip().splitlines()
  text = text[0] if text else ""
  return f"{type(e).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def read_meta(directory: str | os.PathLike, step: int | None = None) -> dict[str, Any]:
  """The JSON metadata of a checkpoint step (the latest by default)."""
  directory = os.path.abspath(os.fspath(directory))
  with manager(directory) as mngr:
    requested, step = step, _checked_step(mngr, directory, step)
    try:
      restored, step = _restore_latest(mngr, requested, step, ocp.args.Composite(**{META: ocp.args.JsonRestore()}))
    except Exception as e:  # noqa: BLE001 - orbax raises many types for unreadable files
      raise ValueError(
          f"Checkpoint {directory!r} step {step} has no readable metadata ({error_summary(e)}). "
          "It may be truncated or not a focalnet_jax checkpoint."
      ) from e
  return {k: v for k, v in restored[META].items() if k != CHECKSUMS}  # the meta as its writer gave it


def restore_state(
    directory: str | os.PathLike, target: Any = None, step: int | None = None
) -> tuple[Any, dict[str, Any], int]:
  """Restores (state, meta, step). With `target` (a pytree of arrays or ShapeDtypeStructs,
  possibly carrying shardings) the state is restored onto it; without, as numpy arrays."""
  directory = os.path.abspath(os.fspath(directory))
  with manager(directory) as mngr:
    requested, step = step, _checked_step(mngr, directory, step)
    fallback = None
    if target is not None:
      target = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    else:  # a checkpoint saved by processes (devices) this one does not have: onto one local device
      fallback = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    try:
      args = ocp.args.Composite(**{STATE: ocp.args.StandardRestore(target, fallback_sharding=fallback),
                                   META: ocp.args.JsonRestore()})
      restored, step = _restore_latest(mngr, requested, step, args)
    except Exception as e:  # noqa: BLE001
      earlier = sorted(s for s in mngr.all_steps() if s < step)
      raise ValueError(
          f"Could not restore checkpoint {os.path.join(directory, str(step))!r} "
          f"({error_summary(e)}). It may be truncated or corrupt, or written for a different model "
          "(compare its meta with your config). "
          + (f"Load an earlier step instead (step={earlier[-1]}; it has {earlier}), or convert "
             "or train it again." if earlier else "Convert or train it again.")
          + " Nothing was changed on disk."
      ) from e
    earlier = sorted(s for s in mngr.all_steps() if s < step)
  where = f"Checkpoint {os.path.join(directory, str(step))!r}" + (f" (earlier steps: {earlier})" if earlier else "")
  verify(restored[STATE], restored[META], where)
  return restored[STATE], {k: v for k, v in restored[META].items() if k != CHECKSUMS}, step


def restore_to_resume(mngr: ocp.CheckpointManager, target: Any) -> tuple[Any, int]:
  """(state, step) of the latest intact step of a training run, restored onto `target`
  (ShapeDtypeStructs carrying the shardings). A step whose checksums do not match is moved aside
  to `<step>.corrupt` (kept, never deleted) with a warning, and the previous step is tried. A
  step that cannot be restored at all is an error that names it and the step to fall back to."""
  directory = os.fspath(mngr.directory)
  while True:
    latest = mngr.latest_step()
    path = os.path.join(directory, str(latest))
    earlier = sorted(s for s in mngr.all_steps() if s < latest)
    try:
      restored = mngr.restore(latest, args=ocp.args.Composite(
          **{STATE: ocp.args.StandardRestore(target), META: ocp.args.JsonRestore()}))
    except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types
      raise ValueError(
          f"Cannot resume from {path} ({error_summary(e)}). It is truncated or corrupt, or was written "
          "by a run with another model or optimizer config (compare config.json in the workdir). "
          + (f"To resume from step {earlier[-1]} instead, move {path} out of the way" if earlier
             else "To start afresh, use a new --workdir")
          + "; nothing was deleted."
      ) from e
    try:
      verify(restored[STATE], restored[META], f"Checkpoint {path!r}")
      return restored[STATE], latest
    except ChecksumMismatch as e:
      if not earlier or jax.process_count() > 1:  # processes would have to agree on the move
        raise ValueError(f"Cannot resume: {e}" + (f" Move {path} out of the way to resume from step "
                                                  f"{earlier[-1]}." if earlier else "")) from e
      aside = f"{path}.corrupt"
      os.rename(path, aside)
      logging.getLogger("absl").warning("%s Moved it to %s (kept for inspection); resuming from step %d.",
                                        e, aside, earlier[-1])
      mngr.reload()


def load_params(
    directory: str | os.PathLike, step: int | None = None, ema: bool = False
) -> tuple[Any, dict[str, Any]]:
  """(params, meta) of a checkpoint written by training or by conversion."""
  state, meta, step = restore_state(directory, step=step)
  return params_of(state, directory, step, ema), meta


def params_of(state: dict[str, Any], directory: str | os.PathLike, step: int, ema: bool = False) -> Any:
  """The model params of a restored state: its EMA copy with `ema`, else the raw params."""
  key = "ema_params" if ema else "params"
  if key not in state:
    raise KeyError(
        f"Checkpoint {os.fspath(directory)!r} step {step} has no {key!r} (it has {sorted(state)})."
        + (" It was written without EMA; evaluate the raw params instead." if ema else "")
    )
  check_finite(state[key], f"Checkpoint {os.path.join(os.fspath(directory), str(step))!r}")
  return state[key]


def check_finite(params: Any, source: str) -> None:
  """Refuses weights holding NaN or inf: every logit of a model with them is NaN, and an eval over
  NaN logits counts them as predictions of the first classes (a top-1 that looks like a number)."""
  import numpy as np

  bad = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    a = np.asarray(leaf)
    if a.dtype.kind == "f" or a.dtype.name == "bfloat16":
      n = int(a.size - np.count_nonzero(np.isfinite(a.astype(np.float32))))
      if n:
        bad.append(f"{jax.tree_util.keystr(path, simple=True, separator='/')} ({n} of {a.size})")
  if bad:
    raise ValueError(
        f"{source} holds non-finite weights (NaN or inf) in {len(bad)} array(s): {', '.join(bad[:5])}"
        + (f" and {len(bad) - 5} more" if len(bad) > 5 else "") + ". Every prediction of a model with them is "
        "NaN. The file is damaged or comes from a run that diverged: download or convert it again, or load "
        "an earlier step.")


def meta_of(mngr: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  """The metadata of `step` in an open manager; a ValueError naming the step if it cannot be read."""
  try:
    return dict(mngr.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META])
  except Exception as e:  # noqa: BLE001 - orbax raises many types for unreadable files
    raise ValueError(f"the metadata of {os.path.join(os.fspath(mngr.directory), str(step))} cannot be read "
                     f"({error_summary(e)})") from e


def check_saves(mngr: ocp.CheckpointManager, step: int, intact: int | None, wait: bool = False) -> None:
  """Raises one clear OSError if an asynchronous save (of `step`) failed in the background,
  e.g. on a full disk: the step, the directory, the cause and the step still intact on disk.
  `wait`: first wait for the save to finish."""
  try:
    if wait:
      mngr.wait_until_finished()
    mngr.check_for_errors()
  except Exception as e:  # noqa: BLE001 - whatever the writer raised
    mngr.reload()
    if step in mngr.all_steps():  # committed: what failed was removing older steps (keep_checkpoints)
      logging.getLogger("absl").warning(
          "Removing old checkpoints after saving step %d failed (%s); step %d is saved and the run goes on. "
          "The older steps are still in %s: delete them by hand if the space matters.",
          step, error_summary(e), step, os.fspath(mngr.directory))
      return
    raise OSError(
        f"Saving checkpoint step {step} to {os.fspath(mngr.directory)} failed ({error_summary(e)}). "
        f"The last intact checkpoint is {f'step {intact}' if intact is not None else 'none'}. Fix the "
        "cause (e.g. free disk space) and rerun the same command to resume from it.") from e
