"""The focal context of focal modulation, Z^out, computed by a named implementation.

Steps 2-4 of docs/model.md, "Focal modulation": from Z^0 = f_z(x), the L focal levels
Z^l = GELU(DWConv_l(Z^{l-1})), the global context Z^{L+1} = GELU(mean(Z^L)) (the mean in
float32) and the gated sum Z^out = sum_l G^l * Z^l. Every implementation computes the
reference's values and gradients:

- 'reference': the level loop as the paper writes it; autodiff keeps every level (and the
  GELU inputs) of every block alive until the backward pass reaches it.
- 'fused': the same forward in one `jax.custom_vjp` whose residuals are only Z^0, the
  kernels and the gates; its backward recomputes the levels of its own block, so a training
  step holds one block's levels at a time instead of all of them (a remat of exactly this
  part of the block, leaving the matmuls' outputs stored). On XLA:CPU the saving is smaller
  than the residuals suggest: its pipeline expands optimisation barriers before CSE, which
  merges part of the recomputation back into the forward (jax.checkpoint fares the same).
- 'pallas': the forward with each level's conv, GELU and gated accumulate in one Pallas
  kernel (`pallas_focal_level.py`; interpreted on CPU, for tests only), the fused backward.
  Written for the portable block API, it does not lower for a GPU.
- 'mosaic': the forward's levels, GELUs and gated sum in one Mosaic GPU kernel for Hopper
  (`mosaic_focal_context.py`: reads Z^0 and the gates once, writes Z^out once); its backward
  recomputes the levels in one more (`mosaic_focal_backward.py`: reads Z^0, the gates and the
  cotangent once, writes dZ^0 once), the global term's gradient by XLA. Maps whose row tiles do not
  fit shared memory, and L = 0, keep the fused backward. jax >= 0.11; interpreted on CPU (tests).

'reference' and 'fused' call `depthwise.depthwise_conv(..., depthwise_impl)` for the convolutions, so the
fused backward differentiates the same depthwise implementation the reference does.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from focalnet_jax.kernels import depthwise, mosaic_common, mosaic_focal_backward, mosaic_focal_context, pallas_focal_level
from focalnet_jax.kernels.registry import Registry
from focalnet_jax.model.layers import gelu


@dataclasses.dataclass(frozen=True)
class ContextSpec:
  """What the focal context computes besides its arrays (hashable: a static argument)."""

  use_global_context: bool
  normalize_modulator: bool
  depthwise_impl: str


# (spec, z0 (B, H, W, C), kernels ((k_l, k_l, 1, C) for each level), gates (B, H, W, n) or None)
#   -> Z^out (B, H, W, C) in z0's dtype
ContextFn = Callable[[ContextSpec, jax.Array, tuple[jax.Array, ...], jax.Array | None], jax.Array]

_IMPLEMENTATIONS: Registry[ContextFn] = Registry("focal_context_impl")
register = _IMPLEMENTATIONS.register


def available() -> tuple[str, ...]:
  """Names accepted by `focal_context(..., impl=...)`."""
  return _IMPLEMENTATIONS.names()


def check(impl: str) -> str:
  """`impl` if it names an implementation; ValueError naming the choices otherwise."""
  return _IMPLEMENTATIONS.check(impl)


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
  return _add_global_context(spec, _spatial_mean(z), z_out, gates, len(kernels))


def _spatial_mean(z_last: jax.Array) -> jax.Array:
  """GlobalAvgPool(Z^L) in float32, (B, 1, 1, C)."""
  return jnp.mean(z_last.astype(jnp.float32), axis=(1, 2), keepdims=True)


def _add_global_context(spec: ContextSpec, mean: jax.Array, z_out: jax.Array, gates: jax.Array | None,
                        num_levels: int) -> jax.Array:
  """Z^out after the levels -> the final Z^out: the global term, then the optional normalisation."""
  if spec.use_global_context:
    # Z^{L+1} = GELU(GlobalAvgPool(Z^L)), the mean in float32; Z^out += G^{L+1} * Z^{L+1}.
    z_global = gelu(mean).astype(z_out.dtype)
    z_out = z_out + (z_global if gates is None else z_global * gates[..., num_levels : num_levels + 1])
  if spec.normalize_modulator:  # divide by the number of summed terms
    z_out = z_out / (num_levels + int(spec.use_global_context))
  return z_out


def _fused_bwd(spec, residuals, g):
  # Recompute the levels from Z^0 and the kernels and differentiate them here: the levels
  # live only while this block's backward runs. The barrier (taking the cotangent too) keeps
  # XLA from merging the recomputation with the forward pass (CSE), which would keep the
  # forward's levels alive until here after all, and from scheduling it before it is needed.
  residuals, g = lax.optimization_barrier((residuals, g))
  _, vjp = jax.vjp(lambda *args: focal_context_reference(spec, *args), *residuals)
  return vjp(g)


def _with_fused_backward(forward: ContextFn) -> ContextFn:
  """`forward` as a custom VJP that stores only its inputs (Z^0, the kernels, the gates); its
  backward recomputes the levels with the reference and differentiates them (`_fused_bwd`)."""
  fn = jax.custom_vjp(forward, nondiff_argnums=(0,))
  fn.defvjp(lambda spec, *args: (forward(spec, *args), args), _fused_bwd)
  return fn


_fused = _with_fused_backward(focal_context_reference)


@register("fused")
def focal_context_fused(spec: ContextSpec, z0: jax.Array, kernels: tuple[jax.Array, ...],
                        gates: jax.Array | None) -> jax.Array:
  """The reference forward in one custom VJP that stores Z^0, the kernels and the gates only."""
  refs = (z0,) if gates is None else (z0, gates)
  # Inside shard_map, replicated kernels enter with the batch's varying axes (as depthwise does).
  kernels = tuple(depthwise._varying_like(k, *refs) for k in kernels)  # noqa: SLF001
  gates = None if gates is None else depthwise._varying_like(gates, z0)  # noqa: SLF001
  return _fused(spec, depthwise._varying_like(z0, *kernels), kernels, gates)  # noqa: SLF001


def _pallas_forward(spec: ContextSpec, z: jax.Array, kernels: tuple[jax.Array, ...],
                    gates: jax.Array | None) -> jax.Array:
  """The reference's forward with each level one Pallas kernel (interpreted on CPU)."""
  z_out = jnp.zeros_like(z)
  for level, kernel in enumerate(kernels):
    gate = None if gates is None else gates[..., level : level + 1]
    # Chosen by the platform the program is lowered for, not the default backend, so that a
    # program compiled ahead of time for a GPU (tools.aot) gets the compiled kernel.
    z, z_out = jax.lax.platform_dependent(
        z, kernel, gate, z_out,
        cpu=functools.partial(pallas_focal_level.focal_level, interpret=True),
        default=functools.partial(pallas_focal_level.focal_level, interpret=False))
  return _add_global_context(spec, _spatial_mean(z), z_out, gates, len(kernels))


_pallas = _with_fused_backward(_pallas_forward)


@register("pallas")
def focal_context_pallas(spec: ContextSpec, z0: jax.Array, kernels: tuple[jax.Array, ...],
                         gates: jax.Array | None) -> jax.Array:
  """Each level's conv, GELU and gated accumulate in one Pallas kernel; the fused path's backward.

  Never chosen by default; on CPU the kernel is interpreted (slow: for tests only). It does not
  yet lower for a GPU (see `pallas_focal_level`).
  """
  refs = (z0,) if gates is None else (z0, gates)
  kernels = tuple(depthwise._varying_like(k, *refs) for k in kernels)  # noqa: SLF001
  return _pallas(spec, z0, kernels, gates)


def _mosaic_parts(spec: ContextSpec, z0: jax.Array, kernels: tuple[jax.Array, ...],
                  gates: jax.Array | None) -> tuple[jax.Array, jax.Array | None]:
  """(Z^out, the float32 mean of Z^L or None for L = 0): the levels and their gated sum in one Mosaic
  GPU kernel, the global term from its tile sums."""
  if not kernels:  # L = 0 (an ablation): only the global term, nothing to fuse
    return focal_context_reference(spec, z0, kernels, gates), None
  b, h, w, c = z0.shape
  num_levels = len(kernels)
  z_out, tile_sums = _mosaic_levels(z0, kernels, _level_gates(z0, gates, num_levels))
  mean = (jnp.sum(tile_sums, axis=1) / (h * w)).reshape(b, 1, 1, c)
  return _add_global_context(spec, mean, z_out, gates, num_levels), mean


def _level_gates(z0: jax.Array, gates: jax.Array | None, num_levels: int) -> jax.Array:
  # Without gating the levels are summed unweighted: gates of one (B x H x W x L, small).
  return jnp.ones((*z0.shape[:3], num_levels), z0.dtype) if gates is None else gates[..., :num_levels]


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


def _on_platform(kernel_fn):
  """kernel_fn(..., interpret=) interpreted where the program is lowered for a CPU (tests), compiled
  elsewhere: chosen by the lowering platform, so that tools.aot gets the compiled kernel."""
  def call(*args):
    return lax.platform_dependent(*args, cpu=functools.partial(kernel_fn, interpret=True),
                                  default=functools.partial(kernel_fn, interpret=False))
  return call


_mosaic_levels = jax.custom_batching.custom_vmap(_on_platform(mosaic_focal_context.focal_levels))
_mosaic_levels.def_vmap(_batch_rule(_mosaic_levels))
_mosaic_levels_bwd = jax.custom_batching.custom_vmap(_on_platform(mosaic_focal_backward.focal_levels_bwd))
_mosaic_levels_bwd.def_vmap(_batch_rule(_mosaic_levels_bwd))


def _mosaic_bwd(spec, residuals, g):
  """The global term's and the normalisation's gradients by XLA (from the saved mean), the levels'
  in one Mosaic GPU kernel (`mosaic_focal_backward.py`); XLA's recompute (`_fused_bwd`) for L = 0 and
  for maps whose row tiles overflow shared memory (chosen statically from the shapes)."""
  z0, kernels, gates, mean = residuals
  b, h, w, c = z0.shape
  num_levels = len(kernels)
  if mean is None or not mosaic_focal_backward.fits(h, w, [k.shape[0] for k in kernels], z0.dtype):
    return _fused_bwd(spec, (z0, kernels, gates), g)
  gate_args = () if gates is None else (gates,)
  # Z^out enters the global term and the normalisation linearly: its value does not matter here.
  _, vjp = jax.vjp(lambda m, z_out, *gt: _add_global_context(spec, m, z_out, *(gt or (None,)), num_levels),
                   mean, jnp.zeros_like(z0), *gate_args)
  d_mean, d_levels, *d_gates = vjp(g)
  u = d_mean.reshape(b, c) / (h * w)  # mean = sum over pixels / HW: every pixel of Z^L gets this
  dz0, dks, dg = _mosaic_levels_bwd(z0, kernels, _level_gates(z0, gates, num_levels), d_levels, u)
  varying = lambda a: depthwise._varying_like(a, z0, g)  # noqa: E731, SLF001 (custom calls carry no shard_map axes)
  dks = tuple(varying(jnp.sum(dk, axis=0).astype(k.dtype)) for dk, k in zip(dks, kernels))  # per example -> batch
  if gates is not None:
    d_gates = [d_gates[0].at[..., :num_levels].add(varying(dg).astype(gates.dtype))]
  return (varying(dz0), dks, *(d_gates or (None,)))


def _mosaic_fwd(spec, z0, kernels, gates):
  out, mean = _mosaic_parts(spec, z0, kernels, gates)
  return out, (z0, kernels, gates, mean)  # the mean (B x C float32): GELU' of the global term


_mosaic = jax.custom_vjp(lambda spec, z0, kernels, gates: _mosaic_parts(spec, z0, kernels, gates)[0],
                         nondiff_argnums=(0,))
_mosaic.defvjp(_mosaic_fwd, _mosaic_bwd)


@register("mosaic")
def focal_context_mosaic(spec: ContextSpec, z0: jax.Array, kernels: tuple[jax.Array, ...],
                         gates: jax.Array | None) -> jax.Array:
  """Every level, GELU and the gated sum in one Mosaic GPU kernel (`mosaic_focal_context.py`), their
  gradients in another (`mosaic_focal_backward.py`; XLA's recompute where it does not fit). Needs
  jax >= 0.11; on CPU it is interpreted (slow: for tests only). Not yet run on a GPU, nor on a batch
  sharded over GPUs."""
  if not mosaic_common.available():
    raise RuntimeError(
        f"focal_context_impl='mosaic' needs jax >= 0.11 (its Mosaic GPU API and CPU interpreter); this is "
        f"jax {jax.__version__}. Use 'reference' or 'fused', or upgrade jax.")
  refs = (z0,) if gates is None else (z0, gates)
  kernels = tuple(depthwise._varying_like(k, *refs) for k in kernels)  # noqa: SLF001
  return _mosaic(spec, z0, kernels, gates)


def focal_context(z0: jax.Array, kernels: Sequence[jax.Array], gates: jax.Array | None, *,
                  use_global_context: bool, normalize_modulator: bool, depthwise_impl: str,
                  impl: str = "reference") -> jax.Array:
  """Z^out = sum_{l=1}^{L} G^l * Z^l + G^{L+1} * Z^{L+1} (docs/model.md, "Focal modulation").

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
