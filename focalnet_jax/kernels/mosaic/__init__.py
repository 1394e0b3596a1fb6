"""Mosaic GPU kernels (Hopper; jax >= 0.11) for a stack of depthwise-conv + GELU levels and their
gated sum: the one door to this folder. Nothing here knows a FocalNet field; the model's focal
context (`focalnet_jax.model.focal_context`, 'mosaic') calls these four names.

- `focal_levels(z0, kernels, gates)`: Z^l = GELU(DWConv_l(Z^{l-1})) for every level, written only as
  sum_l G^l * Z^l and the per-row-tile sums of the last level (`forward.py`).
- `focal_levels_bwd(z0, kernels, gates, d_out, u)`: their gradients, the levels recomputed in shared
  memory (`backward.py`); `fits(...)` says whether a map's row tiles fit shared memory for it.

Where a program is lowered for a CPU (tests), the kernels run in jax's Mosaic GPU interpreter;
elsewhere they are compiled. NOT YET RUN ON A GPU: only the interpreter and deviceless compiles
(`focalnet_jax.tools.aot`) have checked them.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from focalnet_jax.kernels.mosaic import backward, common, forward

available = common.available
fits = backward.fits


def _on_platform(kernel_fn):
  """kernel_fn(..., interpret=) interpreted where the program is lowered for a CPU, compiled elsewhere:
  chosen by the lowering platform, not the default backend, so that AOT compiles for a GPU get the
  compiled kernel."""
  def call(*args):
    return lax.platform_dependent(*args, cpu=functools.partial(kernel_fn, interpret=True),
                                  default=functools.partial(kernel_fn, interpret=False))
  return call


def _batch_rule(fn):
  """vmap of fn(z0, kernels, *per-example arrays) whose outputs all lead with the batch (per-example
  gradients): a batch of batches is one larger batch, the kernels shared; kernels that differ
  along the vmapped axis run one kernel call per element."""

  def rule(axis_size, in_batched, z0, kernels, *rest):
    z_b, k_b, *r_b = in_batched
    full = lambda a, batched: a if batched else jnp.broadcast_to(a, (axis_size, *a.shape))  # noqa: E731
    if any(k_b):
      args = (full(z0, z_b), tuple(map(full, kernels, k_b)), *map(full, rest, r_b))
      out = lax.map(lambda a: fn(*a), args)
    else:
      flat = lambda a, batched: full(a, batched).reshape(-1, *a.shape[2 if batched else 1:])  # noqa: E731
      out = fn(flat(z0, z_b), kernels, *map(flat, rest, r_b))
      out = jax.tree.map(lambda o: o.reshape(axis_size, -1, *o.shape[1:]), out)
    return out, jax.tree.map(lambda _: True, out)

  return rule


focal_levels = jax.custom_batching.custom_vmap(_on_platform(forward.focal_levels))
focal_levels.def_vmap(_batch_rule(focal_levels))
focal_levels_bwd = jax.custom_batching.custom_vmap(_on_platform(backward.focal_levels_bwd))
focal_levels_bwd.def_vmap(_batch_rule(focal_levels_bwd))

__all__ = ["available", "fits", "focal_levels", "focal_levels_bwd"]
