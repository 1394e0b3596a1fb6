"""The Mosaic GPU backward kernel of the focal levels (kernels/mosaic/backward.py), run in jax's
Mosaic GPU interpreter on CPU (jax >= 0.11), compiled where the default backend is a GPU: dZ^0,
every kernel's and every gate's gradient equal jax.vjp of an independent computation (XLA's grouped
conv) for row tiles with halos, odd sides, widths that are not a multiple of 16, one to three
levels, a map smaller than one 64-pixel chunk, bf16 and float32; which maps fall back to XLA.
Model-level gradients of execution.focal_context='mosaic' are in test_focal_context.py.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focalnet_jax.kernels.mosaic import backward as mfb
from focalnet_jax.kernels.mosaic import common as mc
from focalnet_jax.kernels.activations import gelu

from test_mosaic_focal_context import allocated_smem, levels_by_xla

needs_interpreter = pytest.mark.skipif(not mc.available(), reason="needs jax >= 0.11 (Mosaic GPU interpreter)")


def inputs(shape, kernel_sizes, dtype, seed=0):
  rng = np.random.default_rng(seed)
  b, h, w, c = shape
  cast = lambda a: jnp.asarray(a, dtype)  # noqa: E731
  return (cast(rng.normal(size=shape)), [cast(rng.normal(size=(k, k, 1, c)) * 0.3) for k in kernel_sizes],
          cast(rng.normal(size=(b, h, w, len(kernel_sizes)))), cast(rng.normal(size=shape)),
          jnp.asarray(rng.normal(size=(b, c)), jnp.float32))


@needs_interpreter
@pytest.mark.parametrize("shape,kernel_sizes,dtype", [
    ((2, 14, 14, 32), (3, 5), jnp.float32),  # two 7-row tiles, two channel blocks: FocalNet's srf
    ((1, 9, 7, 4), (3,), jnp.float32),  # 3-row tiles, odd sides, 4 channels padded to 16, one level
    ((1, 9, 7, 20), (3, 5, 7), jnp.float32),  # three levels, halo 6 > the map: every row is a border
    ((2, 7, 7, 16), (3, 5), jnp.float32),  # stage 4 at 224: the tile is the image, smaller than a chunk
    ((1, 16, 5, 20), (3, 5), jnp.bfloat16),  # two 8-row tiles of 40 pixels, bf16
])
def test_gradients_equal_jax_vjp_of_xla(shape, kernel_sizes, dtype):
  z, kernels, gates, d_out, u = inputs(shape, kernel_sizes, dtype)
  got = mfb.focal_levels_bwd(z, kernels, gates, d_out, u, interpret=jax.default_backend() != "gpu")
  # The exact gradients, in float32 from the same (rounded) inputs: the kernel's cotangent is d_out
  # on the gated sum and u on every pixel of Z^L (the global mean's share).
  f32 = lambda a: jax.tree.map(lambda x: x.astype(jnp.float32), a)  # noqa: E731
  _, vjp = jax.vjp(levels_by_xla, *f32((z, kernels, gates)))
  want_z, want_k, want_g = vjp((d_out.astype(jnp.float32), jnp.broadcast_to(u[:, None, None], shape)))
  dz, dks, dg = got
  assert dz.dtype == dtype and dz.shape == shape and dg.shape == gates.shape
  assert [k.shape for k in dks] == [(shape[0],) + k.shape for k in kernels]
  # float32: the summation order only. bfloat16: each level and cotangent is rounded as the reference
  # rounds it, so errors grow with the terms summed (kernel gradients: ~1% of the largest entry).
  for got_a, want_a in [(dz, want_z), (dg, want_g)] + [(k.sum(0), w) for k, w in zip(dks, want_k)]:
    want_a = np.asarray(want_a)
    scale = np.abs(want_a).max()
    tol = dict(rtol=1e-4, atol=1e-4 * scale) if dtype == jnp.float32 else dict(rtol=3e-2, atol=2e-2 * scale)
    np.testing.assert_allclose(np.asarray(got_a, np.float32), want_a, **tol)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_gelu_gradient_the_model_and_the_kernel_use_is_the_true_derivative(dtype):
  # The model's GELU and the backward kernel differentiate through gelu_grad (autodiff of erf fails
  # under shard_map on jax 0.12): it must be GELU' = Phi(x) + x phi(x), here in float64 by math.erf.
  x = np.linspace(-6, 6, 2001)
  want = np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) + v * math.exp(-v * v / 2) / math.sqrt(2 * math.pi)
                   for v in x])
  got = np.asarray(jax.jit(jax.grad(lambda a: jnp.sum(gelu(a))))(jnp.asarray(x, dtype)), np.float64)
  eps = float(jnp.finfo(dtype).eps)
  np.testing.assert_allclose(got, want, atol=4 * eps, rtol=4 * eps)


@needs_interpreter
def test_what_the_kernel_allocates_fits_shared_memory_and_large_maps_fall_back():
  for h, ks, dtype in [(56, (3, 5), jnp.bfloat16), (28, (3, 5), jnp.bfloat16), (14, (3, 5), jnp.bfloat16),
                       (7, (3, 5), jnp.bfloat16), (56, (3, 5, 7), jnp.bfloat16), (56, (3, 5), jnp.float32),
                       (13, (3,), jnp.float32)]:
    p = mfb.plan(h, h, ks, jnp.dtype(dtype).itemsize)
    assert p is not None and h % p.rows == 0 and p.halo == sum(k // 2 for k in ks)
    z = jnp.zeros((1, h, h, 16), dtype)
    used = allocated_smem(mfb.focal_levels_bwd, z, [jnp.zeros((k, k, 1, 16), dtype) for k in ks],
                          jnp.zeros((1, h, h, len(ks)), dtype), z, jnp.zeros((1, 16), jnp.float32))
    assert used <= mc.SMEM_LIMIT, (h, ks, dtype, used)
  assert mfb.plan(56, 56, (3, 5), 2).rows == 8  # FocalNet-T stage 1: 8-row tiles
  # Falls back to XLA's recompute: no levels, or not even one-row tiles fit (lrf on a 224-wide map).
  assert mfb.plan(7, 7, (), 2) is None
  assert not mfb.fits(224, 224, (3, 5, 7), jnp.bfloat16) and mfb.fits(56, 56, (3, 5), jnp.bfloat16)


@needs_interpreter
def test_focal_context_uses_the_kernel_backward_only_where_it_fits(monkeypatch):
  from focalnet_jax.model import focal_context as fc
  calls, xla_backward = [], fc._fused_bwd  # noqa: SLF001
  monkeypatch.setattr(fc, "_fused_bwd", lambda *a: calls.append(a) or xla_backward(*a))
  z = jnp.ones((1, 7, 7, 16), jnp.float32)

  def grad(kernels):
    f = lambda z, k: jnp.sum(fc.focal_context(z, k, None, use_global_context=True, normalize_modulator=False,  # noqa: E731
                                              depthwise_impl="xla", impl="mosaic"))
    return jax.grad(f, argnums=(0, 1))(z, kernels)

  grad([jnp.ones((3, 3, 1, 16)) * 0.1])  # fits: the kernel, never the XLA recompute
  assert not calls
  grad([])  # L = 0: the XLA recompute
  assert len(calls) == 1
