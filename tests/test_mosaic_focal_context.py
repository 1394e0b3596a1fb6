"""The Mosaic GPU focal-context kernel (kernels/mosaic/forward.py), run in jax's Mosaic GPU
interpreter on CPU (jax >= 0.11), compiled where the default backend is a GPU: every level, the gated sum and the per-tile
sums of Z^L equal an independent computation (XLA's grouped conv) for row tiles with halos,
odd sides, widths that are not a multiple of 16, one to three levels, bf16 and float32. Model-level
values and gradients of execution.focal_context='mosaic' are in test_focal_context.py.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from focalnet_jax.model import focal_context as fc
from focalnet_jax.kernels.mosaic import common as mc
from focalnet_jax.kernels.mosaic import forward as mfc
from focalnet_jax.model.layers import gelu

needs_interpreter = pytest.mark.skipif(not mc.available(), reason="needs jax >= 0.11 (Mosaic GPU interpreter)")


def levels_by_xla(z, kernels, gates):
  out = jnp.zeros_like(z)
  for level, k in enumerate(kernels):
    conv = lax.conv_general_dilated(z, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    feature_group_count=z.shape[-1], preferred_element_type=jnp.float32)
    z = gelu(conv.astype(z.dtype))
    out = out + z * gates[..., level : level + 1]
  return out, z


@needs_interpreter
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("shape,kernel_sizes", [
    ((2, 14, 14, 32), (3, 5)),  # two 7-row tiles, two channel blocks: FocalNet's srf
    ((1, 9, 7, 4), (3,)),  # 3-row tiles, odd sides, 4 channels padded to 16, one level
    ((1, 12, 20, 40), (3, 5, 7)),  # lrf: three levels, halo 6, 40 channels padded to 48
    ((2, 7, 7, 16), (3, 5)),  # stage 4 at 224: the tile is the image, smaller than a chunk
])
def test_levels_gated_sum_and_tile_sums_equal_xla(shape, kernel_sizes, dtype):
  rng = np.random.default_rng(0)
  b, h, w, c = shape
  z = jnp.asarray(rng.normal(size=shape), dtype)
  kernels = [jnp.asarray(rng.normal(size=(k, k, 1, c)) * 0.3, dtype) for k in kernel_sizes]
  gates = jnp.asarray(rng.normal(size=(b, h, w, len(kernel_sizes))), dtype)
  out, sums = mfc.focal_levels(z, kernels, gates, interpret=jax.default_backend() != "gpu")
  want, z_last = levels_by_xla(z, kernels, gates)
  t = mfc.tiling(h, w, kernel_sizes, jnp.dtype(dtype).itemsize)
  want_sums = z_last.astype(jnp.float32).reshape(b, h // t.rows, t.rows * w, c).sum(axis=2)
  assert out.dtype == dtype and out.shape == shape and sums.shape == (b, h // t.rows, c)
  # Taps sum in float32 in another order than XLA's conv: one ulp of the compute dtype.
  tol = dict(rtol=1e-2, atol=2e-2) if dtype == jnp.bfloat16 else dict(rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(want, np.float32), **tol)
  np.testing.assert_allclose(np.asarray(sums), np.asarray(want_sums), rtol=1e-4, atol=1e-3)


def allocated_smem(kernel_fn, *args) -> int:
  """Bytes of shared memory the scratch arrays that `kernel_fn` hands to Mosaic GPU take: each array
  from a 1 KiB boundary, as Mosaic GPU allocates them, plus its reserved reduction scratch and barrier
  (measured from the arrays the kernel actually requests, not from the tiling's own arithmetic)."""
  requested = []

  def fake_launch(body, out_type, scratch_types, grid, interpret):
    requested.extend(s for s in scratch_types if hasattr(s, "shape"))
    return lambda *a: jax.tree.map(lambda o: jnp.zeros(o.shape, o.dtype), out_type)

  real, mc.launch = mc.launch, fake_launch
  try:
    kernel_fn.__wrapped__(*args, interpret=True)  # unjitted: no trace cached under the real launch
  finally:
    mc.launch = real
  kib = lambda n: -(-n // 1024) * 1024  # noqa: E731
  return sum(kib(int(np.prod(s.shape)) * jnp.dtype(s.dtype).itemsize) for s in requested) + 2048 + 1024


@needs_interpreter
def test_tiles_divide_the_rows_and_what_the_kernel_allocates_fits_shared_memory():
  for h, ks in [(56, (3, 5)), (28, (3, 5, 7)), (7, (3, 5)), (96, (3, 5, 7)), (13, (3,))]:
    t = mfc.tiling(h, h, ks, 2)
    assert h % t.rows == 0 and t.halo == sum(k // 2 for k in ks) and t.window == t.rows + 2 * t.halo
    z = jnp.zeros((1, h, h, 16), jnp.bfloat16)
    kernels = [jnp.zeros((k, k, 1, 16), jnp.bfloat16) for k in ks]
    used = allocated_smem(mfc.focal_levels, z, kernels, jnp.zeros((1, h, h, len(ks)), jnp.bfloat16))
    assert used <= mc.SMEM_LIMIT, (h, ks, used)
  # FocalNet-T stage 1: 8-row tiles whose whole allocation fits two blocks per SM.
  t = mfc.tiling(56, 56, (3, 5), 2)
  z = jnp.zeros((1, 56, 56, 16), jnp.bfloat16)
  used = allocated_smem(mfc.focal_levels, z, [jnp.zeros((k, k, 1, 16), jnp.bfloat16) for k in (3, 5)],
                        jnp.zeros((1, 56, 56, 2), jnp.bfloat16))
  assert t.rows == 8 and used <= mc.SMEM_BUDGET


@pytest.mark.skipif(mc.available(), reason="this jax has the Mosaic GPU API")
def test_older_jax_is_told_what_the_kernel_needs():
  z = jnp.zeros((1, 7, 7, 16))
  with pytest.raises(RuntimeError, match="needs jax >= 0.11"):
    fc.focal_context(z, [jnp.zeros((3, 3, 1, 16))], None, use_global_context=True, normalize_modulator=False,
                     depthwise_impl="xla", impl="mosaic")
