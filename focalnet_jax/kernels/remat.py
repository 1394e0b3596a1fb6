"""What a training step keeps of each block's forward pass for the backward pass (`execution.remat`).

- 'none': everything the backward needs is stored (fastest while it fits in memory).
- 'block': each block is rematerialised whole: only its input is stored and its forward runs
  again in the backward pass (least memory; about a third more compute).
- 'dots': each block keeps its matmul outputs (f, h, proj and the MLP's two layers) and
  recomputes the elementwise work between them (LayerNorm, GELU, the depthwise focal levels,
  the gating and the modulation). On an accelerator where FocalNet is bound by memory traffic,
  not by its matmuls, recomputing cheap elementwise ops can cost less than writing and reading
  them back.

Every policy gives the same values and gradients; `True` / `False` (the older boolean field)
mean 'block' / 'none'.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

POLICIES = {
    "none": None,
    "block": jax.checkpoint_policies.nothing_saveable,
    # A Dense layer is a dot_general with no batch dimensions, so this keeps exactly the matmuls.
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
_ALIASES = {True: "block", False: "none", "true": "block", "false": "none"}


def resolve(remat: Any) -> str:
  """The policy name for an `execution.remat` value; a ValueError names the choices."""
  key = remat.lower() if isinstance(remat, str) else remat
  if isinstance(key, (bool, str)) and key in _ALIASES:
    return _ALIASES[key]
  if isinstance(key, str) and key in POLICIES:
    return key
  raise ValueError(f"remat={remat!r} is not one of {tuple(POLICIES)} (or True / False).")


def wrap(module_cls: type[nn.Module], remat: str, static_argnums: tuple[int, ...]) -> type[nn.Module]:
  """`module_cls` rematerialised under the named policy (itself for 'none')."""
  if remat == "none":
    return module_cls
  return nn.remat(module_cls, static_argnums=static_argnums, policy=POLICIES[remat])
