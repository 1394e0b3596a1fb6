"""The train state: the model a config describes, and its state created sharded, restored, or
initialised from another checkpoint.

The state is a plain dict {'step', 'params', 'opt_state'[, 'ema_params']}. It is created already
sharded: `jax.eval_shape` of the init gives shapes, the FSDP rule (`sharding.tree_shardings`) gives
shardings, and `jax.jit(init, out_shardings=...)` materialises each leaf once, where it lives.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from focalnet_jax import checkpoint
from focalnet_jax.model import FocalNet, variants
from focalnet_jax.model.execution import LEGACY_NAMES
from focalnet_jax.train.config_check import execution_of

State = dict[str, Any]
HEAD_PREFIX = "head/"
def model_overrides(config: ml_collections.ConfigDict, num_classes: int) -> dict[str, Any]:
  """The architecture fields the config sets (None = the variant's value), JSON-ready. The former
  execution keys still in config.model are not architecture (`execution_of` reads them)."""
  overrides = {k: v for k, v in config.model.to_dict().items()
               if k != "name" and k not in LEGACY_NAMES and v is not None}
  overrides.setdefault("num_classes", num_classes)
  return {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()}


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> tuple[FocalNet, dict[str, Any]]:
  """(module, architecture overrides) for the config's model with the dataset's class count."""
  overrides = model_overrides(config, num_classes)
  return variants.create_model(config.model.name, **overrides, execution=execution_of(config)), overrides


def make_init_fn(model: FocalNet, tx: optax.GradientTransformation, image_size: int,
                 use_ema: bool) -> Callable[[jax.Array], State]:
  """rng -> a fresh train state (params from the model's own initialisers)."""
  def init_fn(rng: jax.Array) -> State:
    dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    params = model.init({"params": rng, "dropout": rng}, dummy, train=False)["params"]
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
    if use_ema:
      state["ema_params"] = params
    return state
  return init_fn


def with_shardings(abstract: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of `abstract` carrying `shardings` (what a sharded restore targets)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def _flat(tree: Any) -> dict[str, Any]:
  return {"/".join(str(getattr(k, "key", k)) for k in path): v
          for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _fit_problems(want: dict, got: dict) -> tuple[list[str], list[str]]:
  """(head keys to re-initialise, other mismatches described) between model and checkpoint."""
  missing = sorted(set(want) - set(got))
  extra = sorted(set(got) - set(want))
  mismatched = sorted(k for k in set(want) & set(got) if tuple(want[k].shape) != tuple(np.shape(got[k])))
  # A head of another size, or a missing head (a checkpoint converted with num_classes=0), is re-initialised.
  head = [k for k in mismatched + missing if k.startswith(HEAD_PREFIX)]
  problems = [f"{k}: checkpoint {np.shape(got[k])} vs model {tuple(want[k].shape)}"
              for k in mismatched if k not in head]
  problems += [f"{k}: missing from the checkpoint" for k in missing if k not in head]
  problems += [f"{k}: in the checkpoint, not in the model" for k in extra if not k.startswith(HEAD_PREFIX)]
  return head, problems


def load_pretrained(init_from: str, abstract_params: Any, fresh_params: Any, shardings: Any) -> Any:
  """Params of `init_from` placed onto `shardings`; a head of another shape keeps `fresh_params`'.

  Any other missing key, extra key or shape mismatch is an error naming them.
  """
  loaded, meta = checkpoint.load_params(init_from)
  want, got = _flat(abstract_params), _flat(loaded)
  head, problems = _fit_problems(want, got)
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
  fresh, flat_shard = _flat(fresh_params), _flat(shardings)
  leaves = [fresh[k] if k in head else jax.device_put(np.asarray(got[k], dtype=want[k].dtype), flat_shard[k])
            for k in want]
  return jax.tree.unflatten(jax.tree.structure(abstract_params), leaves)


def create_state(init_fn: Callable[[jax.Array], State], rng: jax.Array, shardings: Any,
                 abstract: State, init_from: str | None) -> State:
  """A fresh sharded state; with `init_from`, its params (and EMA) come from that checkpoint."""
  state = jax.jit(init_fn, out_shardings=shardings)(rng)
  if init_from:
    params = load_pretrained(init_from, abstract["params"], state["params"], shardings["params"])
    state["params"] = params
    if "ema_params" in state:
      state["ema_params"] = jax.tree.map(jnp.copy, params)
    logging.info("Initialised params from %s.", init_from)
  return state
