"""A dense layer whose output is several segments, each written at an aligned channel offset.

Focal modulation's `f` is one matmul whose output is split into q (C channels), Z^0 (C) and the
gates (L + 1, or none without gating): 2C + L + 1 channels, e.g. 195 for C = 96, L = 2. On GPUs a
matmul output whose width and segment starts are not multiples of 8 channels (16 bytes in
bfloat16) has unaligned rows, and every slice taken from it starts mid-vector. `AlignedSplitDense`
computes the same three segments from the same parameters, but lays the output out with each
segment starting at a multiple of `align` channels and the total width rounded up to one too:

    C = 96, G = 3, align = 8:   q at 0..96,  z at 96..192,  gates at 192..195,  width 200

The zero columns that make the gaps are inserted into the kernel and the bias when the layer is
applied, so the parameters keep exactly nn.Dense's names, shapes and initialisers (`kernel`
(C_in, sum of widths), `bias` (sum of widths,)): checkpoints, converters and parameter counts do
not see the option. The padded columns compute zeros that nobody reads, and the gradient reaching
them is dropped by the pad that inserted them. It is an execution choice (which layout the matmul
writes), not an architecture one, like the remat policy.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any


def check_align(align: Any, field: str = "f_align") -> int:
  """`align` as an int if it is an int >= 1; ValueError naming `field` otherwise."""
  if isinstance(align, (bool, np.bool_)) or not isinstance(align, (int, np.integer)) or align < 1:
    raise ValueError(
        f"{field}={align!r} must be an int >= 1: the channel multiple at which each segment of the "
        "fused projection starts (1 keeps the plain layout; 8 aligns bfloat16 rows to 16 bytes)."
    )
  return int(align)


def round_up(value: int, align: int) -> int:
  """The smallest multiple of `align` that is >= `value`."""
  return -(-value // align) * align


def segment_layout(widths: Sequence[int], align: int) -> tuple[tuple[int, ...], int]:
  """(start of each segment, total width) when each segment starts at a multiple of `align` and the
  total width is one too; `segment_layout((96, 96, 3), 8) == ((0, 96, 192), 200)`.

  A segment of width 0 (the gates without gating) still gets an offset, and an empty slice there.
  """
  align = check_align(align, "align")
  offsets, end = [], 0
  for width in widths:
    start = round_up(end, align)
    offsets.append(start)
    end = start + int(width)
  return tuple(offsets), round_up(end, align)


def pad_segments(a: jax.Array, widths: Sequence[int], align: int) -> jax.Array:
  """`a`, sum(widths) wide in its last axis, with the aligned layout's zero columns inserted."""
  offsets, total = segment_layout(widths, align)
  pieces, start = [], 0
  ends = offsets[1:] + (total,)
  for width, offset, next_offset in zip(widths, offsets, ends):
    piece = a[..., start : start + width]
    pad = [(0, 0)] * (a.ndim - 1) + [(0, next_offset - offset - width)]
    pieces.append(jnp.pad(piece, pad))
    start += width
  return jnp.concatenate(pieces, axis=-1)


class AlignedSplitDense(nn.Module):
  """nn.Dense(sum(widths)) followed by a split into `widths`, with the matmul writing the
  aligned layout of `segment_layout(widths, align)`. Same params as that nn.Dense; returns the
  segments as a tuple."""

  widths: tuple[int, ...]
  align: int
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
    features = sum(self.widths)
    kernel = self.param("kernel", self.kernel_init, (jnp.shape(x)[-1], features), self.param_dtype)
    bias = self.param("bias", self.bias_init, (features,), self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    # Padded in the compute dtype: the zero columns cost no cast.
    kernel = pad_segments(kernel, self.widths, self.align)
    bias = pad_segments(bias, self.widths, self.align)
    y = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
    y += jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
    offsets, _ = segment_layout(self.widths, self.align)
    return tuple(y[..., o : o + w] for o, w in zip(offsets, self.widths))
