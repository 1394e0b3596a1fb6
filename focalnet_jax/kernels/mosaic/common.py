"""What the focal-context Mosaic GPU kernels share (forward: `forward.py`, backward:
`backward.py`): their constants, the TMA copy pieces, the WGMMA register layout's
broadcasts, one chunk's depthwise taps over flat pixel rows, and the launch.

Both kernels keep each level as flat pixel rows (16 channels) in shared memory, so that the tap
(i, j) of a k x k conv is the constant flat offset (i - p) * W + (j - p) for every pixel and one
tap is one contiguous (64 pixels, 16 channels) load; taps that wrap around a row end are masked.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from focalnet_jax.kernels.aligned_projection import round_up  # one rounding for every kernel's layout

CHUNK = 64  # pixels per register array: the WGMMA layout's row tile
CHANNELS = 16  # channels per CUDA block: 32-byte rows in bf16, the TMA's smallest efficient box
TMA_BOX = 256  # the TMA copies at most this many elements along a dimension
SMEM_BUDGET = 110 * 1024  # bytes per CUDA block: two blocks fit an SM's 227 KiB ...
SMEM_LIMIT = 220 * 1024  # ... else one block per SM, rather than tiles of few rows
REDUCTION_SCRATCH = 2048  # bytes Mosaic GPU reserves for cross-warp sums (CompilerParams' default)


def available() -> bool:
  """Whether this jax has the Mosaic GPU API the kernels are written against (and its CPU interpreter)."""
  return hasattr(plgpu, "InterpretGPUParams") and hasattr(plgpu, "Layout")


def smem_bytes(shapes, itemsize: int) -> int:
  """What Mosaic GPU allocates for scratch arrays of these shapes in one dtype: each array from a
  1024-byte boundary, then the reduction scratch and one barrier. Both kernels size their tiles by
  this, from the very shapes they allocate."""
  arrays = sum(round_up(math.prod(shape) * itemsize, 1024) for shape in shapes)
  return arrays + REDUCTION_SCRATCH + 1024


def pieces(n: int, step: int) -> list[tuple[int, int]]:
  """(start, size) copies covering n rows (n rounded up to `step`), each at most TMA_BOX rows."""
  n = round_up(n, step)
  return [(q, min(TMA_BOX, n - q)) for q in range(0, n, TMA_BOX)]


# The WGMMA register layout (64 x 8 tiles over a warpgroup) of a (CHUNK, CHANNELS) array, and its
# per-pixel (row) and per-channel (column) vectors. Functions: plgpu.Layout is jax >= 0.11 only.
def full():
  return plgpu.Layout.WGMMA


def per_pixel():
  return plgpu.Layout.WGMMA.reduce(1)


def per_channel():
  return plgpu.Layout.WGMMA.reduce(0)


def rows(v: jax.Array) -> jax.Array:
  """A per-pixel vector (mask, gate) broadcast over the chunk's channels."""
  return plgpu.layout_cast(lax.broadcast_in_dim(v, (CHUNK, CHANNELS), (0,)), full())


def cols(v: jax.Array) -> jax.Array:
  """A per-channel vector (kernel tap) broadcast over the chunk's pixels."""
  return plgpu.layout_cast(lax.broadcast_in_dim(v, (CHUNK, CHANNELS), (1,)), full())


def zeros() -> jax.Array:
  return plgpu.layout_cast(jnp.zeros((CHUNK, CHANNELS), jnp.float32), full())


def pixel_iota() -> jax.Array:
  return plgpu.broadcasted_iota(jnp.int32, (CHUNK,), 0, layout=per_pixel())


def load(ref, start) -> jax.Array:
  """The (CHUNK, CHANNELS) chunk of a flat pixel buffer from `start`, in registers."""
  return plgpu.load(ref.at[pl.ds(start, CHUNK)], layout=full())


def tap_sum(src: Callable[[int], object], taps, s, k: int, w: int, *, transpose: bool = False) -> jax.Array:
  """sum_{i,j} K[i, j] * X(s + o_ij) in float32 over the chunk of flat pixels [s, s + CHUNK): the k x k
  depthwise conv (o_ij = (i - p) W + (j - p)), or with `transpose` its transpose (o_ij negated: the
  input gradient of the conv, summing each output's cotangent back onto the pixels it read).

  src(o): the chunk at flat offset o from s (a register array); taps: the (k * k, CHANNELS) ref of
  the kernel. A tap whose column leaves the row, x + dx outside [0, W), reads the neighbouring
  row's pixel: masked, as the zero padding left and right of the image.
  """
  p = k // 2
  x = lax.rem(s + pixel_iota(), w)
  sign = -1 if transpose else 1
  acc = zeros()
  for i in range(k):
    for j in range(k):
      dx = sign * (j - p)
      v = src(sign * (i - p) * w + dx)
      tap = plgpu.load(taps.at[i * k + j], layout=per_channel()).astype(jnp.float32)
      acc = acc + jnp.where(rows((x + dx >= 0) & (x + dx < w)), v.astype(jnp.float32), 0.0) * cols(tap)
  return acc


def tap_rows(kernel_sizes) -> int:
  """Rows of a flat kernel: the largest level's k * k taps, rounded up to 8 (whole 128-byte TMA copies)."""
  return round_up(max(kernel_sizes) ** 2, 8)


def flat_kernels(kernels, dtype, channels: int) -> tuple[int, list[jax.Array]]:
  """(taps, each level's kernel as (taps, channels) rows in `dtype`): `tap_rows` rows, channels zero
  padded to `channels`."""
  taps = tap_rows([k.shape[0] for k in kernels])
  return taps, [jnp.pad(k.reshape(k.shape[0] ** 2, k.shape[-1]).astype(dtype),
                        ((0, taps - k.shape[0] ** 2), (0, channels - k.shape[-1]))) for k in kernels]


def flat_pixels(a: jax.Array, pad: int, channels: int, dtype) -> jax.Array:
  """(B, H, W, C) -> (B, (H + 2 pad) W + 8, channels) in `dtype`: `pad` zero rows above and below (the
  halo a tile's copy reads past the image), pixels flattened row-major, channels zero padded, and 8
  pixels of slack for the copies' rounding."""
  b, h, w, c = a.shape
  a = jnp.pad(a.astype(dtype), ((0, 0), (pad, pad), (0, 0), (0, channels - c)))
  return jnp.pad(a.reshape(b, (h + 2 * pad) * w, channels), ((0, 0), (0, 8), (0, 0)))


def launch(body, out_type, scratch_types, grid, interpret: bool):
  """The kernel over grid (example, row tile, channel block) in Lane semantics, interpreted on CPU."""
  return plgpu.kernel(
      body,
      out_type=out_type,
      scratch_types=scratch_types,
      grid=grid,
      grid_names=("b", "t", "c"),
      compiler_params=plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Lane),
      interpret=plgpu.InterpretGPUParams() if interpret else None,
  )


def block_index() -> tuple[jax.Array, jax.Array, jax.Array]:
  """This CUDA block's (example, row tile, channel block)."""
  return tuple(lax.axis_index(axis) for axis in ("b", "t", "c"))

