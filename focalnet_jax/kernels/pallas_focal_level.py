"""One focal level's forward as a Pallas kernel: depthwise conv, GELU and the gated accumulate.

For Z^{l-1} (B, H, W, C), the level's kernel (k, k, 1, C), its gate G^l (B, H, W, 1) or none, and
the running sum Z^out, one pass computes Z^l = GELU(DWConv_l(Z^{l-1})) and Z^out + G^l * Z^l,
so the conv output never goes to memory before the GELU and the accumulate. The grid runs over
(example, channel block); each step holds one example's padded map for its channels, sums the
k*k taps in float32 and writes both outputs in the input's dtype.

Written against the portable `pl.pallas_call` block API; on CPU it runs with `interpret=True`
(the tests). It does not lower for a GPU as written (checked by compiling for an H200 without
one, `focalnet_jax.tools.aot`): jax 0.10 sends it to Mosaic GPU, where one grid step's blocks
(a whole padded 58x58x96 map and four 56x56x96 maps at stage 1) need 2.4 MB of shared memory
against an SM's 227 KiB; jax 0.11 sends a `pallas_call` without compiler params to Triton, which
wants power-of-2 blocks. A GPU kernel has to tile rows with a halo (Mosaic GPU takes only
`Blocked` block specs: overlapping row blocks, or a manual copy from GMEM) and, on jax 0.11, be
written against `plgpu.kernel` / `plgpu.emit_pipeline`. The backward is not here:
`kernels.focal_context` wraps the forward in a custom VJP whose backward is the reference's.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from focalnet_jax.model.layers import gelu


def _level_kernel(zp_ref, k_ref, acc_ref, *rest, k: int, h: int, w: int, gated: bool):
  gate_ref, z_ref, out_ref = rest if gated else (None, *rest)
  zp = zp_ref[...].astype(jnp.float32)  # (1, H + k - 1, W + k - 1, Cb)
  kernel = k_ref[...].astype(jnp.float32)  # (k, k, Cb)
  conv = jnp.zeros(z_ref.shape, jnp.float32)
  for i in range(k):
    for j in range(k):
      conv = conv + zp[:, i : i + h, j : j + w, :] * kernel[i, j]
  z = gelu(conv.astype(z_ref.dtype))  # rounded to the compute dtype first, as the reference's conv is
  z_ref[...] = z
  term = z * gate_ref[...] if gated else z
  out_ref[...] = acc_ref[...] + term


def _channel_block(c: int) -> int:
  """Channels per grid step: the whole C up to 128, else the largest divisor <= 128 that is a multiple of 8."""
  if c <= 128:
    return c
  return max((b for b in range(8, 129, 8) if c % b == 0), default=c)


@functools.partial(jax.jit, static_argnames=("interpret",))
def focal_level(z: jax.Array, kernel: jax.Array, gate: jax.Array | None, acc: jax.Array, *,
                interpret: bool = False) -> tuple[jax.Array, jax.Array]:
  """(Z^l, acc + G^l * Z^l) for Z^{l-1} = z; `gate` (B, H, W, 1) or None (weight 1)."""
  b, h, w, c = z.shape
  k = kernel.shape[0]
  p = k // 2
  zp = jnp.pad(z, ((0, 0), (p, p), (p, p), (0, 0)))
  cb = _channel_block(c)
  gated = gate is not None
  in_specs = [
      pl.BlockSpec((1, h + 2 * p, w + 2 * p, cb), lambda i, j: (i, 0, 0, j)),
      pl.BlockSpec((k, k, cb), lambda i, j: (0, 0, j)),
      pl.BlockSpec((1, h, w, cb), lambda i, j: (i, 0, 0, j)),
  ]
  args = [zp, kernel.reshape(k, k, c).astype(z.dtype), acc]
  if gated:
    in_specs.append(pl.BlockSpec((1, h, w, 1), lambda i, j: (i, 0, 0, 0)))
    args.append(gate.astype(z.dtype))
  out_spec = pl.BlockSpec((1, h, w, cb), lambda i, j: (i, 0, 0, j))
  return pl.pallas_call(
      functools.partial(_level_kernel, k=k, h=h, w=w, gated=gated),
      out_shape=(jax.ShapeDtypeStruct(z.shape, z.dtype), jax.ShapeDtypeStruct(z.shape, z.dtype)),
      grid=(b, c // cb),
      in_specs=in_specs,
      out_specs=(out_spec, out_spec),
      interpret=interpret,
      name="focal_level",
  )(*args)
