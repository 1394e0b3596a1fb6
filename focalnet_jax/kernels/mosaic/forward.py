"""All focal levels of focal modulation in one Mosaic GPU kernel (Hopper; jax >= 0.11).

From Z^0 (B, H, W, C), the level kernels and the gates, one pass computes every level
Z^l = GELU(DWConv_l(Z^{l-1})) and writes only sum_l G^l * Z^l and, per row tile, the sum of Z^L
over its pixels (the global context's mean is finished outside, from B x T x C numbers). XLA
instead writes each level's conv output, GELU and running sum to memory, level by level.

How one CUDA block works. The grid is (example, row tile, channel block of 16). A block copies
(TMA) its tile's rows plus a halo of R = sum_l k_l // 2 rows above and below (the input is zero
padded by R rows, so the copy never leaves the array) into shared memory, with pixels flattened
row-major: in that flat layout the tap (i, j) of a k x k conv is the same constant offset
(i - p) * W + (j - p) for every pixel, so each tap is one contiguous (64 pixels, 16 channels)
load. Taps that would wrap around a row end are masked (the conv's zero padding left and right);
level outputs on rows outside the image are set to zero (its padding above and below). Level l
is computed on the window rows the later levels still need (the halo shrinks by k_l // 2 per
level) and kept in shared memory; the last level is computed on the tile's rows only, where the
gated sum is formed and written back. Taps sum in float32; each level is rounded to the compute
dtype before its GELU, as the reference's conv output is, so values match the reference up to
the summation order (one ulp of the compute dtype).

Arrays live in the WGMMA register layout (64 x 8 tiles over a warpgroup), whose row and column
vectors broadcast per pixel (masks, gates) and per channel (kernel taps). On CPU the kernel runs
in jax's Mosaic GPU interpreter (`plgpu.InterpretGPUParams`, tests); it compiles for a GPU
without one (`focalnet_jax.tools.aot`).
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from focalnet_jax.kernels.mosaic import common as mc
from focalnet_jax.kernels.mosaic.common import CHANNELS, CHUNK, SMEM_BUDGET, SMEM_LIMIT, TMA_BOX
from focalnet_jax.kernels.activations import gelu


class Tiling(NamedTuple):
  """How an (H, W) map is cut into row tiles and laid out in shared memory (flat pixel rows)."""

  rows: int  # image rows per tile, a divisor of H
  halo: int  # R = sum_l k_l // 2: rows the levels' taps reach above and below a tile
  window: int  # rows + 2R rows copied per tile
  front: int  # flat slack before the window: the first level's taps reach p pixels back
  size: int  # flat pixels of one level buffer: the window, then slack for a last chunk's taps
  buffers: int  # level buffers: Z^0, then each level the last one still reads
  w: int
  kernel_sizes: tuple[int, ...]

  def tile_pixels(self, w: int) -> int:
    return self.rows * w

  def gate_rows(self) -> int:
    return mc.round_up(self.rows * self.w, 64)

  def scratch_shapes(self) -> list[tuple[int, ...]]:
    """Shared memory arrays in the compute dtype: the level buffers, every level's taps, the tile's
    gates and the output tile (with a chunk of slack)."""
    levels = len(self.kernel_sizes)
    return [(self.buffers, self.size, CHANNELS), (levels, mc.tap_rows(self.kernel_sizes), CHANNELS),
            (levels, self.gate_rows()), (self.rows * self.w + CHUNK, CHANNELS)]

  def smem_bytes(self, itemsize: int) -> int:
    return mc.smem_bytes(self.scratch_shapes(), itemsize)


def tiling(h: int, w: int, kernel_sizes: Sequence[int], itemsize: int) -> Tiling:
  """The largest row tile (a divisor of H, at most 8 rows) whose shared memory fits `SMEM_BUDGET`,
  else `SMEM_LIMIT`, else one row (every row tile re-reads 2R halo rows, so few rows cost reads)."""
  pads = [k // 2 for k in kernel_sizes]
  halo = sum(pads)
  # Level l (0-based) < L - 1 writes buffer 1 for l = 0, else buffer 0 for l = 1 (Z^0 is no longer
  # read), else buffer l; the last level reads its input and every earlier level from them.
  buffers = 1 if len(pads) == 1 else max(2, len(pads) - 1)
  front = mc.round_up(max(pads), 8)
  candidates = []
  for rows in sorted((d for d in range(1, min(h, 8) + 1) if h % d == 0), reverse=True):
    window = rows + 2 * halo
    size = front + mc.round_up(window * w, 8) + CHUNK + max(pads) * (w + 1)
    t = Tiling(rows, halo, window, front, size, buffers, w, tuple(kernel_sizes))
    candidates.append((t.smem_bytes(itemsize), t))
  for budget in (SMEM_BUDGET, SMEM_LIMIT):
    for need, t in candidates:
      if need <= budget:
        return t
  return candidates[-1][1]


def _level_buffer(level: int) -> int:
  """The buffer that holds Z^{level+1} (0-based `level`) while later levels read it."""
  return 1 if level == 0 else 0 if level == 1 else level


def _body(zp_g, *refs, t: Tiling, h: int, w: int, kernel_sizes: tuple[int, ...]):
  num_levels = len(kernel_sizes)
  k_g = refs[:num_levels]
  g_g, out_g, sum_g, bufs, kbuf, gbuf, obuf, barrier = refs[num_levels:]
  b, ti, ci = mc.block_index()
  channels = pl.ds(ci * CHANNELS, CHANNELS)
  tile = t.tile_pixels(w)
  dtype = bufs.dtype

  # In: the tile's window of Z^0, every level's taps, the tile's gates; one barrier for all.
  for q, m in mc.pieces(t.window * w, 8):
    plgpu.copy_gmem_to_smem(zp_g.at[b, pl.ds(ti * tile + q, m), channels], bufs.at[0, pl.ds(t.front + q, m)], barrier)
  for level in range(num_levels):
    plgpu.copy_gmem_to_smem(k_g[level].at[:, channels], kbuf.at[level], barrier)
    for q, m in mc.pieces(tile, 64):
      plgpu.copy_gmem_to_smem(g_g.at[b, ti, level, pl.ds(q, m)], gbuf.at[level, pl.ds(q, m)], barrier)
  plgpu.barrier_wait(barrier)

  rows, iota = mc.rows, mc.pixel_iota()

  def level_chunk(level: int, s) -> jax.Array:
    """Z^{level+1} on the window's flat pixels [s, s + CHUNK), zero on rows outside the image."""
    src = bufs.at[0 if level == 0 else _level_buffer(level - 1)]
    acc = mc.tap_sum(lambda o: mc.load(src, t.front + s + o), kbuf.at[level], s, kernel_sizes[level], w)
    z = gelu(acc.astype(dtype))
    y = lax.div(s + iota, w) + ti * t.rows - t.halo  # the image row
    return jnp.where(rows((y >= 0) & (y < h)), z, jnp.zeros_like(z))

  reached = 0
  for level in range(num_levels - 1):  # the levels the next ones read, on the rows they read
    reached += kernel_sizes[level] // 2
    lo, hi = reached * w, (t.window - reached) * w
    dst = bufs.at[_level_buffer(level)]

    def store(i, carry, level=level, lo=lo, dst=dst):
      s = lo + i * CHUNK
      dst[pl.ds(t.front + s, CHUNK)] = level_chunk(level, s)
      return carry

    lax.fori_loop(0, math.ceil((hi - lo) / CHUNK), store, 0)

  def gated_sum(i, z_sum):
    """The last level on the tile's rows; Z^out = sum_l G^l * Z^l in the reference's order."""
    o = i * CHUNK  # the tile's pixel
    s = t.halo * w + o
    z_last = level_chunk(num_levels - 1, s)
    total = None
    for level in range(num_levels):
      z = z_last if level == num_levels - 1 else mc.load(bufs.at[_level_buffer(level)], t.front + s)
      term = z * rows(plgpu.load(gbuf.at[level, pl.ds(o, CHUNK)], layout=mc.per_pixel()))
      total = term if total is None else total + term
    obuf[pl.ds(o, CHUNK)] = total
    return z_sum + jnp.where(rows(o + iota < tile), z_last.astype(jnp.float32), 0.0)

  z_sum = mc.zeros()
  z_sum = lax.fori_loop(0, math.ceil(tile / CHUNK), gated_sum, z_sum)
  sum_g[b, ti, channels] = jnp.sum(z_sum, axis=0)

  plgpu.commit_smem()
  for q in range(0, tile, TMA_BOX):
    m = min(TMA_BOX, tile - q)
    plgpu.copy_smem_to_gmem(obuf.at[pl.ds(q, m)], out_g.at[b, pl.ds(ti * tile + q, m), channels])
  plgpu.wait_smem_to_gmem(0)


@functools.partial(jax.jit, static_argnames=("interpret",))
def focal_levels(z0: jax.Array, kernels: Sequence[jax.Array], gates: jax.Array, *,
                 interpret: bool = False) -> tuple[jax.Array, jax.Array]:
  """(sum_l G^l * Z^l in z0's dtype, the sum of Z^L over each row tile's pixels (B, T, C) float32).

  z0: Z^0 (B, H, W, C); kernels: (k_l, k_l, 1, C) per level; gates: (B, H, W, L), one per level.
  Channels are padded to a multiple of 16 here when C is not one (FocalNet widths are).
  """
  b, h, w, c = z0.shape
  dtype = z0.dtype
  kernel_sizes = tuple(k.shape[0] for k in kernels)
  num_levels = len(kernel_sizes)
  t = tiling(h, w, kernel_sizes, jnp.dtype(dtype).itemsize)
  tile, num_tiles = t.tile_pixels(w), h // t.rows
  cp = mc.round_up(c, CHANNELS)
  zp = mc.flat_pixels(z0, t.halo, cp, dtype)  # Z^0 with R zero rows above and below
  _, flat = mc.flat_kernels(kernels, dtype, cp)
  gate_rows = t.gate_rows()
  g = gates.astype(dtype).reshape(b, num_tiles, tile, num_levels).transpose(0, 1, 3, 2)
  g = jnp.pad(g, ((0, 0), (0, 0), (0, 0), (0, gate_rows - tile)))
  out, sums = mc.launch(
      functools.partial(_body, t=t, h=h, w=w, kernel_sizes=kernel_sizes),
      (jax.ShapeDtypeStruct((b, h * w, cp), dtype), jax.ShapeDtypeStruct((b, num_tiles, cp), jnp.float32)),
      [
          *(plgpu.SMEM(shape, dtype) for shape in t.scratch_shapes()),
          plgpu.Barrier(num_arrivals=len(mc.pieces(t.window * w, 8)) + num_levels * (1 + len(mc.pieces(tile, 64)))),
      ],
      (b, num_tiles, cp // CHANNELS), interpret,
  )(zp, *flat, g)
  return out[..., :c].reshape(b, h, w, c), sums[..., :c]
