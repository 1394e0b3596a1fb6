"""The focal context of focal modulation, Z^out (Yang et al., NeurIPS 2022, Eq. 4-6; docs/model.md,
"Focal modulation", steps 2-4), and the named implementations that compute it.

From Z^0 = f_z(x):
    Z^l     = GELU(DWConv_l(Z^{l-1})),        l = 1..L   (focal levels, growing kernels)
    Z^{L+1} = GELU(GlobalAvgPool(Z^L))                   (global context; the mean in float32)
    Z^out   = sum_{l=1}^{L+1} G^l * Z^l                   (gated aggregation)
`focal_context_reference` is exactly this loop. Every other implementation gives its values and
gradients (tests/test_focal_context.py):

- 'reference': the loop under autodiff, which keeps every level (and the GELU inputs) of every
  block alive until the backward pass reaches it.
- 'fused': the same forward in one `jax.custom_vjp` whose residuals are only Z^0, the kernels and
  the gates; its backward recomputes the levels of its own block, so a training step holds one
  block's levels at a time (a remat of exactly this part of the block). On XLA:CPU the saving is
  smaller than the residuals suggest: its pipeline expands optimisation barriers before CSE, which
  merges part of the recomputation back into the forward (jax.checkpoint fares the same).
- 'mosaic': the levels, GELUs and gated sum in one Mosaic GPU kernel (`focalnet_jax.kernels.mosaic`),
  their gradients in another; the global term by XLA. jax >= 0.11; interpreted on CPU (tests only);
  never run on a GPU yet (docs/execution.md).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from focalnet_jax.kernels import depthwise, mosaic
from focalnet_jax.kernels.activations import gelu
from focalnet_jax.kernels.depthwise import varying_like
from focalnet_jax.kernels.registry import Registry


@dataclasses.dataclass(frozen=True)
class ContextSpec:
  """What the focal context computes besides its arrays (hashable: a static argument)."""

  use_global_context: bool
  normalize_modulator: bool
  depthwise_impl: str


# (spec, z0 (B, H, W, C), kernels ((k_l, k_l, 1, C) for each level), gates (B, H, W, n) or None)
#   -> Z^out (B, H, W, C) in z0's dtype
ContextFn = Callable[[ContextSpec, jax.Array, tuple[jax.Array, ...], jax.Array | None], jax.Array]

_IMPLEMENTATIONS: Registry[ContextFn] = Registry("execution.focal_context")
register = _IMPLEMENTATIONS.register


def available() -> tuple[str, ...]:
  """Names accepted by `focal_context(..., impl=...)`."""
  return _IMPLEMENTATIONS.names()


def check(impl: str) -> str:
  """`impl` if it names an implementation; ValueError naming the choices otherwise."""
  return _IMPLEMENTATIONS.check(impl)


def focal_context(z0: jax.Array, kernels: Sequence[jax.Array], gates: jax.Array | None, *,
                  use_global_context: bool, normalize_modulator: bool, depthwise_impl: str,
                  impl: str = "reference") -> jax.Array:
  """Z^out = sum_{l=1}^{L} G^l * Z^l + G^{L+1} * Z^{L+1}, by the implementation `impl`.

  Args:
    z0: Z^0 = f_z(x), (B, H, W, C), in the compute dtype.
    kernels: the L depthwise kernels (k_l, k_l, 1, C), cast to z0's dtype when applied.
    gates: (B, H, W, L + use_global_context), raw; None sums the terms unweighted (no gating).
    use_global_context: add G^{L+1} * GELU(mean(Z^L)), the mean in float32.
    normalize_modulator: divide Z^out by the number of summed terms.
    depthwise_impl: a `depthwise.available()` name, already resolved (not 'auto').
    impl: a name from `available()`.
  """
  spec = ContextSpec(bool(use_global_context), bool(normalize_modulator), depthwise_impl)
  return _IMPLEMENTATIONS[check(impl)](spec, z0, tuple(kernels), gates)


# --- 'reference': the paper's equations ----------------------------------------------------------

@register("reference")
def focal_context_reference(spec: ContextSpec, z: jax.Array, kernels: tuple[jax.Array, ...],
                            gates: jax.Array | None) -> jax.Array:
  """The level loop of the paper, differentiated by autodiff."""

  def gated(term: jax.Array, level: int) -> jax.Array:  # G^l * Z^l, G^l broadcast over C
    return term if gates is None else term * gates[..., level : level + 1]

  z_out = jnp.zeros_like(z)
  for level, kernel in enumerate(kernels):
    # Z^l = GELU(DWConv_l(Z^{l-1})), a k_l x k_l depthwise conv; Z^out += G^l * Z^l.
    z = gelu(depthwise.depthwise_conv(z, kernel, spec.depthwise_impl))
    z_out = z_out + gated(z, level)
  return add_global_context(spec, spatial_mean(z), z_out, gates, len(kernels))


def spatial_mean(z_last: jax.Array) -> jax.Array:
  """GlobalAvgPool(Z^L) in float32, (B, 1, 1, C)."""
  return jnp.mean(z_last.astype(jnp.float32), axis=(1, 2), keepdims=True)


def add_global_context(spec: ContextSpec, mean: jax.Array, z_out: jax.Array, gates: jax.Array | None,
                       num_levels: int) -> jax.Array:
  """Z^out after the levels -> the final Z^out: the global term, then the optional normalisation."""
  if spec.use_global_context:
    # Z^{L+1} = GELU(GlobalAvgPool(Z^L)), the mean in float32; Z^out += G^{L+1} * Z^{L+1}.
    z_global = gelu(mean).astype(z_out.dtype)
    z_out = z_out + (z_global if gates is None else z_global * gates[..., num_levels : num_levels + 1])
  if spec.normalize_modulator:  # divide by the number of summed terms
    z_out = z_out / (num_levels + int(spec.use_global_context))
  return z_out


# --- 'fused': the reference forward, a recomputing backward ---------------------------------------

def _fused_bwd(spec, residuals, g):
  # Recompute the levels from Z^0 and the kernels and differentiate them here: the levels
  # live only while this block's backward runs. The barrier (taking the cotangent too) keeps
  # XLA from merging the recomputation with the forward pass (CSE), which would keep the
  # forward's levels alive until here after all, and from scheduling it before it is needed.
  residuals, g = lax.optimization_barrier((residuals, g))
  _, vjp = jax.vjp(lambda *args: focal_context_reference(spec, *args), *residuals)
  return vjp(g)


_fused = jax.custom_vjp(focal_context_reference, nondiff_argnums=(0,))
_fused.defvjp(lambda spec, *args: (focal_context_reference(spec, *args), args), _fused_bwd)


def _varying_inputs(z0, kernels, gates):
  """Inside shard_map, replicated kernels (and gates) enter a custom VJP with the batch's varying
  axes, so that their per-device cotangents are summed as for built-in ops (`varying_like`)."""
  refs = (z0,) if gates is None else (z0, gates)
  kernels = tuple(varying_like(k, *refs) for k in kernels)
  gates = None if gates is None else varying_like(gates, z0)
  return varying_like(z0, *kernels), kernels, gates


@register("fused")
def focal_context_fused(spec: ContextSpec, z0: jax.Array, kernels: tuple[jax.Array, ...],
                        gates: jax.Array | None) -> jax.Array:
  """The reference forward in one custom VJP that stores Z^0, the kernels and the gates only."""
  return _fused(spec, *_varying_inputs(z0, kernels, gates))


# --- 'mosaic': the levels in Mosaic GPU kernels, the global term here -----------------------------

def _level_gates(z0: jax.Array, gates: jax.Array | None, num_levels: int) -> jax.Array:
  # Without gating the levels are summed unweighted: gates of one (B x H x W x L, small).
  return jnp.ones((*z0.shape[:3], num_levels), z0.dtype) if gates is None else gates[..., :num_levels]


def _mosaic_parts(spec: ContextSpec, z0: jax.Array, kernels: tuple[jax.Array, ...],
                  gates: jax.Array | None) -> tuple[jax.Array, jax.Array | None]:
  """(Z^out, the float32 mean of Z^L or None for L = 0): the levels and their gated sum in one kernel
  call, the global term from its per-tile sums."""
  if not kernels:  # L = 0 (an ablation): only the global term, nothing to fuse
    return focal_context_reference(spec, z0, kernels, gates), None
  b, h, w, c = z0.shape
  z_out, tile_sums = mosaic.focal_levels(z0, kernels, _level_gates(z0, gates, len(kernels)))
  mean = (jnp.sum(tile_sums, axis=1) / (h * w)).reshape(b, 1, 1, c)
  return add_global_context(spec, mean, z_out, gates, len(kernels)), mean


def _mosaic_fwd(spec, z0, kernels, gates):
  out, mean = _mosaic_parts(spec, z0, kernels, gates)
  return out, (z0, kernels, gates, mean)  # the mean (B x C float32): GELU' of the global term


def _mosaic_bwd(spec, residuals, g):
  """The global term's and the normalisation's gradients by XLA (from the saved mean), the levels'
  by the backward kernel; XLA's recompute (`_fused_bwd`) for L = 0 and for maps whose row tiles
  overflow shared memory (chosen statically from the shapes)."""
  z0, kernels, gates, mean = residuals
  b, h, w, c = z0.shape
  num_levels = len(kernels)
  if mean is None or not mosaic.fits(h, w, [k.shape[0] for k in kernels], z0.dtype):
    return _fused_bwd(spec, (z0, kernels, gates), g)
  gate_args = () if gates is None else (gates,)
  # Z^out enters the global term and the normalisation linearly: its value does not matter here.
  _, vjp = jax.vjp(lambda m, z_out, *gt: add_global_context(spec, m, z_out, *(gt or (None,)), num_levels),
                   mean, jnp.zeros_like(z0), *gate_args)
  d_mean, d_levels, *d_gates = vjp(g)
  u = d_mean.reshape(b, c) / (h * w)  # mean = sum over pixels / HW: every pixel of Z^L gets this
  dz0, dks, dg = mosaic.focal_levels_bwd(z0, kernels, _level_gates(z0, gates, num_levels), d_levels, u)
  varying = lambda a: varying_like(a, z0, g)  # noqa: E731 (custom calls carry no shard_map axes)
  dks = tuple(varying(jnp.sum(dk, axis=0).astype(k.dtype)) for dk, k in zip(dks, kernels))  # per example -> batch
  if gates is not None:
    d_gates = [d_gates[0].at[..., :num_levels].add(varying(dg).astype(gates.dtype))]
  return (varying(dz0), dks, *(d_gates or (None,)))


_mosaic = jax.custom_vjp(lambda spec, z0, kernels, gates: _mosaic_parts(spec, z0, kernels, gates)[0],
                         nondiff_argnums=(0,))
_mosaic.defvjp(_mosaic_fwd, _mosaic_bwd)


@register("mosaic")
def focal_context_mosaic(spec: ContextSpec, z0: jax.Array, kernels: tuple[jax.Array, ...],
                         gates: jax.Array | None) -> jax.Array:
  """Every level, GELU and the gated sum in one Mosaic GPU kernel, their gradients in another (XLA's
  recompute where it does not fit). Needs jax >= 0.11; on CPU it is interpreted (slow: tests only)."""
  if not mosaic.available():
    raise RuntimeError(
        f"execution.focal_context='mosaic' needs jax >= 0.11 (its Mosaic GPU API and CPU interpreter); this is "
        f"jax {jax.__version__}. Use 'reference' or 'fused', or upgrade jax.")
  refs = (z0,) if gates is None else (z0, gates)
  return _mosaic(spec, z0, tuple(varying_like(k, *refs) for k in kernels), gates)
