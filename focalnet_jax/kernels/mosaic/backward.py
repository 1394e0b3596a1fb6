"""The backward pass of the focal levels in one Mosaic GPU kernel (Hopper; jax >= 0.11).

The forward kernel (`forward.py`) writes only sum_l G^l * Z^l; this kernel turns its
cotangent dOut (and u, the global term's per-channel share of dZ^L, from XLA) into dZ^0, every
level kernel's gradient and every level gate's gradient, recomputing the levels from Z^0 in
shared memory. XLA instead recomputes every level, GELU input and cotangent through memory.

The math, levels m = L .. 1 (A^m = DWConv_m(Z^{m-1}), Z^m = GELU(A^m)):
  dZ^L = G^L * dOut + u;  dA^m = dZ^m * GELU'(A^m);  dZ^{m-1} = G^{m-1} * dOut + ConvT_m(dA^m)
  (no gate term for m = 1: dZ^0 is the output);  dK_m[tap] = sum_p dA^m(p) * Z^{m-1}(p + tap);
  dG^m(p) = sum_c dOut(p, c) * Z^m(p, c).

How one CUDA block works. The grid is (example, row tile, channel block of 16), as the forward's.
dZ^0 on the tile's rows needs dA^1 on the rows +- p_1 (p_m = k_m // 2), dA^2 on +- p_1 + p_2 ... dA^L
on +- R (R = sum p_m); A^L on those rows needs Z^{L-1} on +- R + p_L ... Z^0 on +- 2R. So a block
copies (TMA) Z^0 on the tile +- 2R rows and dOut and the gates on +- R (XLA pads them with zero rows)
as flat pixel rows into shared memory, and then, every array a "region" of the tile's rows +- e:
  1. the forward levels Z^1 .. Z^{L-1}, each on the rows the next level reads (as the forward);
  2. dG^m on the tile's own pixels (Z^L recomputed there), each a per-pixel sum over 16 channels;
  3. dA^L on +- R from A^L (recomputed, rounded to the compute dtype as the reference's conv output);
  4. for m = L .. 1: dK_m from the tile's own pixels (one tap at a time, a (64, 16) float32 sum
     over the chunks, then over its 64 pixels), and the transposed conv of dA^m onto the rows
     +- S_{m-1} (S_m = p_1 + .. + p_m), giving dA^{m-1} (A^{m-1} recomputed there) or dZ^0.
dA alternates between two regions (X: +- R, Y: +- S_{L-1}); dZ^0 lands in the free one and is
copied out. Gradients of Z^{m-1} and dA^m are zero outside the image: levels are stored as zero on
rows outside it and taps that wrap a row end are masked, in both directions. Sums run over each
tile's own pixels only; the kernel writes per-tile (dK) and per-channel-block (dG) partial sums in
float32, which XLA finishes (B x T x L x taps x C and B x C/16 x H x W x L numbers).

Not every shape fits: `plan` returns None when even one-row tiles overflow shared memory (large
kernels on wide maps); the caller then keeps XLA's recompute (the model's fused backward).
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from focalnet_jax.kernels.mosaic import common as mc
from focalnet_jax.kernels.mosaic.common import CHANNELS, CHUNK
from focalnet_jax.kernels.activations import gelu



class Plan(NamedTuple):
  """Row tiles and shared-memory regions. Window pixel s = (row - tile's first row + 2R) * W + x;
  a region of extent e holds the tile's rows +- e: window pixels [(2R - e) W, (rows + 2R + e) W)."""

  rows: int  # image rows per tile, a divisor of H
  w: int
  pads: tuple[int, ...]  # p_m = k_m // 2

  @property
  def halo(self) -> int:
    return sum(self.pads)

  def reach(self, level: int) -> int:
    """S_level: the rows dA^level is needed on, above and below the tile."""
    return sum(self.pads[:level])

  def start(self, extent: int) -> int:
    return (2 * self.halo - extent) * self.w

  def extents(self) -> list[tuple[int, bool]]:
    """(extent, aligned) per region: Z^0 .. Z^{L-1}, dOut, X, Y. Z^m spans the rows level m + 1 reads;
    X and Y are aligned so that the tile's rows start on 8 pixels (the TMA out of dZ^0)."""
    zs = [(2 * self.halo - self.reach(m), False) for m in range(len(self.pads))]
    return zs + [(self.halo, False), (self.halo, True), (self.reach(len(self.pads) - 1), True)]

  def offset(self, extent: int, aligned: bool) -> int:
    """Slack before a region: taps reach p pixels left of its first row."""
    p = max(self.pads)
    return mc.round_up(p + extent * self.w, 8) - extent * self.w if aligned else mc.round_up(p, 8)

  def size(self, extent: int, aligned: bool) -> int:
    """The region, then slack for a last chunk's 63 pixels past its end and their taps."""
    n = mc.round_up((self.rows + 2 * extent) * self.w, 8)
    return self.offset(extent, aligned) + n + mc.round_up(CHUNK + max(self.pads), 8)

  def gate_size(self) -> int:
    return mc.round_up((self.rows + 2 * self.halo) * self.w + CHUNK, 64)

  def taps(self) -> int:
    return mc.tap_rows([2 * p + 1 for p in self.pads])

  def scratch_shapes(self) -> list[tuple[int, ...]]:
    """Shared memory arrays in the compute dtype: the regions, the gates, the taps, u (8 rows)."""
    levels = len(self.pads)
    return ([(self.size(*e), CHANNELS) for e in self.extents()]
            + [(levels, self.gate_size()), (levels, self.taps(), CHANNELS), (8, CHANNELS)])

  def smem_bytes(self, itemsize: int) -> int:
    return mc.smem_bytes(self.scratch_shapes(), itemsize)


def plan(h: int, w: int, kernel_sizes: Sequence[int], itemsize: int) -> Plan | None:
  """The row tile (a divisor of H, at most 8 rows) with the most own rows per window row (r / (r + 4R))
  times blocks per SM (two under `SMEM_BUDGET`); None when none fits `SMEM_LIMIT` or L = 0."""
  if not kernel_sizes:
    return None
  best = None
  for rows in (d for d in range(1, min(h, 8) + 1) if h % d == 0):
    p = Plan(rows, w, tuple(k // 2 for k in kernel_sizes))
    need = p.smem_bytes(itemsize)
    if need <= mc.SMEM_LIMIT:
      score = (2 if need <= mc.SMEM_BUDGET else 1) * rows / (rows + 4 * p.halo)
      best = max(best, (score, rows, p)) if best else (score, rows, p)
  return best[2] if best else None


def gelu_vjp(a: jax.Array, dz: jax.Array) -> jax.Array:
  """dz * GELU'(a) as jax's autodiff of `layers.gelu` computes it, op by op in a's dtype, so that it
  rounds as the reference does (in bfloat16 those roundings are most of the reference's error).
  Written out: Mosaic GPU does not lower autodiff's add_any. Tested equal to jax.vjp(gelu)."""
  const = lambda v: np.asarray(v, a.dtype)  # noqa: E731 (gelu's constants, rounded as it rounds them)
  t = a * const(1 / math.sqrt(2))
  half_cdf = const(0.5) * (const(1.0) + lax.erf(t))
  erf_grad = const(2 / math.sqrt(math.pi)) * (const(0.5) * (a * dz)) * jnp.exp(-(t * t))
  return dz * half_cdf + erf_grad * const(1 / math.sqrt(2))


class _Block:
  """One CUDA block's regions and the steps of the module docstring."""

  def __init__(self, plan_: Plan, h: int, bufs, gbuf, kbuf, ubuf):
    self.p, self.h, self.bufs, self.gbuf, self.kbuf, self.ubuf = plan_, h, bufs, gbuf, kbuf, ubuf
    self.levels = len(plan_.pads)
    self.dout, self.x, self.y = self.levels, self.levels + 1, self.levels + 2  # region numbers
    self.extents = plan_.extents()
    self.b, self.ti, self.ci = mc.block_index()
    self.channels = pl.ds(self.ci * CHANNELS, CHANNELS)
    self.dtype = bufs[0].dtype
    self.tile = plan_.rows * plan_.w
    self.own = 2 * plan_.halo * plan_.w  # the window pixel of the tile's first pixel

  def index(self, region: int, s):
    e, aligned = self.extents[region]
    return self.p.offset(e, aligned) + s - self.p.start(e)

  def chunk(self, region: int, s) -> jax.Array:
    return mc.load(self.bufs[region], self.index(region, s))

  def put(self, region: int, s, value: jax.Array) -> None:
    self.bufs[region][pl.ds(self.index(region, s), CHUNK)] = value

  def in_image(self, s) -> jax.Array:
    y = lax.div(s + mc.pixel_iota(), self.p.w) + self.ti * self.p.rows - 2 * self.p.halo
    return mc.rows((y >= 0) & (y < self.h))

  def gate(self, level: int, s) -> jax.Array:
    g = plgpu.load(self.gbuf.at[level - 1, pl.ds(s - self.p.start(self.p.halo), CHUNK)], layout=mc.per_pixel())
    return mc.rows(g.astype(jnp.float32))

  def pre(self, level: int, s) -> jax.Array:
    """A^level on the chunk at s, rounded to the compute dtype as the reference's conv output."""
    k = 2 * self.p.pads[level - 1] + 1
    acc = mc.tap_sum(lambda o: self.chunk(level - 1, s + o), self.kbuf.at[level - 1], s, k, self.p.w)
    return acc.astype(self.dtype)

  def loop(self, extent: int, body) -> None:
    """body(s) on the chunks covering the tile's rows +- extent (the last may run 63 pixels past)."""
    lo, n = self.p.start(extent), (self.p.rows + 2 * extent) * self.p.w
    lax.fori_loop(0, math.ceil(n / CHUNK), lambda i, c: (body(lo + i * CHUNK), c)[1], 0)

  def copy_in(self, zp_g, dp_g, gp_g, u_g, k_g, barrier) -> None:
    """Z^0 on the tile +- 2R, dOut and the gates on +- R, the taps and u; one barrier for all."""
    b, first = self.b, self.ti * self.tile
    window, near = (self.p.rows + 4 * self.p.halo) * self.p.w, (self.p.rows + 2 * self.p.halo) * self.p.w
    for q, m in mc.pieces(window, 8):
      plgpu.copy_gmem_to_smem(zp_g.at[b, pl.ds(first + q, m), self.channels],
                              self.bufs[0].at[pl.ds(self.index(0, q), m)], barrier)
    for q, m in mc.pieces(near, 8):
      plgpu.copy_gmem_to_smem(dp_g.at[b, pl.ds(first + q, m), self.channels],
                              self.bufs[self.dout].at[pl.ds(self.index(self.dout, self.p.start(self.p.halo) + q), m)],
                              barrier)
    for level in range(self.levels):
      plgpu.copy_gmem_to_smem(k_g[level].at[:, self.channels], self.kbuf.at[level], barrier)
      for q, m in mc.pieces(near, 64):  # whole 128-byte copies: 64 gates in bf16
        plgpu.copy_gmem_to_smem(gp_g.at[b, level, pl.ds(first + q, m)], self.gbuf.at[level, pl.ds(q, m)], barrier)
    plgpu.copy_gmem_to_smem(u_g.at[b, :, self.channels], self.ubuf, barrier)
    plgpu.barrier_wait(barrier)

  def forward_level(self, level: int) -> None:
    """Z^level on the rows the next level reads, zero on rows outside the image (the conv's padding)."""
    def body(s):
      z = gelu(self.pre(level, s))
      self.put(level, s, jnp.where(self.in_image(s), z, jnp.zeros_like(z)))
    self.loop(self.extents[level][0], body)

  def gate_grads(self, dg_g) -> None:
    """dG^m = sum_c dOut * Z^m on the tile's own pixels, this block's 16 channels (Z^L recomputed)."""
    def body(i, carry):
      s = self.own + i * CHUNK
      d = self.chunk(self.dout, s).astype(jnp.float32)
      for level in range(1, self.levels + 1):
        z = self.chunk(level, s) if level < self.levels else gelu(self.pre(level, s))
        dg = jnp.sum(d * z.astype(jnp.float32), axis=1)  # per pixel
        dg_g[self.b, self.ci, self.ti, level - 1, pl.ds(i * CHUNK, CHUNK)] = dg
      return carry
    lax.fori_loop(0, math.ceil(self.tile / CHUNK), body, 0)

  def level_grad(self, level: int, s, dz: jax.Array) -> jax.Array:
    """dA^level = dZ^level * GELU'(A^level) in the compute dtype, zero outside the image."""
    da = gelu_vjp(self.pre(level, s), dz.astype(self.dtype))
    return jnp.where(self.in_image(s), da, jnp.zeros_like(da))

  def last_level(self) -> None:
    """dA^L on the tile +- R into X, from dZ^L = G^L * dOut + u."""
    u = mc.cols(plgpu.load(self.ubuf.at[0], layout=mc.per_channel()).astype(jnp.float32))
    def body(s):
      dz = self.gate(self.levels, s) * self.chunk(self.dout, s).astype(jnp.float32) + u
      self.put(self.x, s, self.level_grad(self.levels, s, dz))
    self.loop(self.p.halo, body)

  def kernel_grads(self, level: int, src: int, dk_g) -> None:
    """dK_level[tap] = sum over the tile's own pixels q of dA(q) * Z^{level-1}(q + tap), unwrapped taps."""
    k, w, iota = 2 * self.p.pads[level - 1] + 1, self.p.w, mc.pixel_iota()
    p = k // 2
    for i in range(k):
      for j in range(k):
        def body(c, acc, i=i, j=j):
          s = self.own + c * CHUNK
          x = lax.rem(s + iota, w)
          ok = (c * CHUNK + iota < self.tile) & (x + j - p >= 0) & (x + j - p < w)
          z = self.chunk(level - 1, s + (i - p) * w + j - p)
          prod = self.chunk(src, s).astype(jnp.float32) * z.astype(jnp.float32)
          return acc + jnp.where(mc.rows(ok), prod, 0.0)
        acc = lax.fori_loop(0, math.ceil(self.tile / CHUNK), body, mc.zeros())
        dk_g[self.b, self.ti, level - 1, i * k + j, self.channels] = jnp.sum(acc, axis=0)

  def transpose_level(self, level: int, src: int, dst: int) -> None:
    """ConvT_level(dA^level) on the tile +- S_{level-1} into dst: dA^{level-1}, or dZ^0 for level 1."""
    k = 2 * self.p.pads[level - 1] + 1
    def body(s):
      dz = mc.tap_sum(lambda o: self.chunk(src, s + o), self.kbuf.at[level - 1], s, k, self.p.w, transpose=True)
      if level == 1:
        self.put(dst, s, dz.astype(self.dtype))
      else:
        dz = dz + self.gate(level - 1, s) * self.chunk(self.dout, s).astype(jnp.float32)
        self.put(dst, s, self.level_grad(level - 1, s, dz))
    self.loop(self.p.reach(level - 1), body)

  def copy_out(self, region: int, dz_g) -> None:
    plgpu.commit_smem()
    base = self.index(region, self.own)
    for q in range(0, self.tile, mc.TMA_BOX):
      m = min(mc.TMA_BOX, self.tile - q)
      plgpu.copy_smem_to_gmem(self.bufs[region].at[pl.ds(base + q, m)],
                              dz_g.at[self.b, pl.ds(self.ti * self.tile + q, m), self.channels])
    plgpu.wait_smem_to_gmem(0)


def _body(zp_g, dp_g, gp_g, u_g, *refs, plan_: Plan, h: int):
  levels = len(plan_.pads)
  k_g, (dz_g, dk_g, dg_g) = refs[:levels], refs[levels:levels + 3]
  bufs = refs[levels + 3:2 * levels + 6]
  gbuf, kbuf, ubuf, barrier = refs[2 * levels + 6:]
  blk = _Block(plan_, h, bufs, gbuf, kbuf, ubuf)
  blk.copy_in(zp_g, dp_g, gp_g, u_g, k_g, barrier)
  for level in range(1, levels):
    blk.forward_level(level)
  blk.gate_grads(dg_g)
  blk.last_level()
  for level in range(levels, 0, -1):
    src, free = (blk.x, blk.y) if (levels - level) % 2 == 0 else (blk.y, blk.x)
    blk.kernel_grads(level, src, dk_g)
    blk.transpose_level(level, src, free)
  blk.copy_out(free, dz_g)


def fits(h: int, w: int, kernel_sizes: Sequence[int], dtype) -> bool:
  """Whether the kernel handles this map (else the caller keeps XLA's recompute)."""
  return plan(h, w, kernel_sizes, jnp.dtype(dtype).itemsize) is not None


@functools.partial(jax.jit, static_argnames=("interpret",))
def focal_levels_bwd(z0: jax.Array, kernels: Sequence[jax.Array], gates: jax.Array, d_out: jax.Array,
                     u: jax.Array, *, interpret: bool = False):
  """(dZ^0 in z0's dtype, per example dK_m (B, k, k, 1, C) float32, dG (B, H, W, L) float32).

  The gradients of <sum_m G^m * Z^m, d_out> + <Z^L, u broadcast over pixels> w.r.t. Z^0, the kernels
  and the gates. z0, d_out: (B, H, W, C); kernels: (k_m, k_m, 1, C); gates: (B, H, W, L); u: (B, C).
  """
  b, h, w, c = z0.shape
  dtype, levels = z0.dtype, len(kernels)
  p = plan(h, w, [k.shape[0] for k in kernels], jnp.dtype(dtype).itemsize)
  if p is None:
    raise ValueError(f"no row tile of a {h}x{w} map fits shared memory; use the XLA backward")
  halo, tile, num_tiles, cp = p.halo, p.rows * w, h // p.rows, mc.round_up(c, CHANNELS)

  gp = mc.flat_pixels(gates, halo, levels, dtype).transpose(0, 2, 1)
  gp = jnp.pad(gp, ((0, 0), (0, 0), (0, mc.round_up(gp.shape[-1] + CHUNK, CHUNK) - gp.shape[-1])))
  # u in the compute dtype, as the reference's cast of the mean's input rounds it; 8 rows: a copy of
  # 16 channels must move a multiple of 128 bytes.
  up = jnp.broadcast_to(jnp.pad(u.astype(dtype), ((0, 0), (0, cp - c)))[:, None], (b, 8, cp))
  _, flat_k = mc.flat_kernels(kernels, dtype, cp)
  tile64 = mc.round_up(tile, CHUNK)
  dz, dk, dg = mc.launch(
      functools.partial(_body, plan_=p, h=h),
      (jax.ShapeDtypeStruct((b, h * w, cp), dtype),
       jax.ShapeDtypeStruct((b, num_tiles, levels, p.taps(), cp), jnp.float32),
       jax.ShapeDtypeStruct((b, cp // CHANNELS, num_tiles, levels, tile64), jnp.float32)),
      [*(plgpu.SMEM(shape, dtype) for shape in p.scratch_shapes()),
       plgpu.Barrier(num_arrivals=len(mc.pieces((p.rows + 4 * halo) * w, 8))
                     + len(mc.pieces((p.rows + 2 * halo) * w, 8))
                     + levels * (1 + len(mc.pieces((p.rows + 2 * halo) * w, 64))) + 1)],
      (b, num_tiles, cp // CHANNELS), interpret,
  )(mc.flat_pixels(z0, 2 * halo, cp, dtype), mc.flat_pixels(d_out, halo, cp, dtype), gp, up, *flat_k)
  dk = jnp.sum(dk, axis=1)
  dks = tuple(dk[:, m, :k.shape[0] ** 2, :c].reshape(b, *k.shape[:2], 1, c) for m, k in enumerate(kernels))
  dg = jnp.sum(dg, axis=1)[..., :tile].transpose(0, 1, 3, 2).reshape(b, h, w, levels)
  return dz[..., :c].reshape(b, h, w, c), dks, dg
