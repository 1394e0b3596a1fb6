"""A Semantic FPN head (Kirillov et al., "Panoptic Feature Pyramid Networks", CVPR 2019; mmseg's
`FPNHead`): each pyramid level is brought to the finest level's stride by 3x3 conv, GroupNorm,
ReLU and 2x bilinear upsampling, once per factor of 2 (one conv without upsampling at the finest
level), the levels are summed, and a 1x1 conv gives per-class logits at the finest stride (4 when
the backbone outputs stage 0). GroupNorm instead of mmseg's BatchNorm: no batch statistics, so
small batches and `jax.jit` need no mutable state.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def upsample2x(x: jax.Array) -> jax.Array:
  """Bilinear 2x upsampling (half-pixel centres: PyTorch's `align_corners=False`)."""
  b, h, w, c = x.shape
  return jax.image.resize(x, (b, 2 * h, 2 * w, c), "bilinear")


class SemanticFPNHead(nn.Module):
  """Pyramid levels at `strides` (fine to coarse, each twice the previous) -> logits at `strides[0]`.

  Parameter names: `scale_{i}/conv_{k}`, `scale_{i}/norm_{k}` for level i's k-th conv, and `classifier`.
  """

  num_classes: int
  channels: int
  strides: Sequence[int]
  num_groups: int = 8
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, pyramid: Sequence[jax.Array]) -> jax.Array:
    if len(pyramid) != len(self.strides):
      raise ValueError(f"{len(pyramid)} pyramid levels but {len(self.strides)} strides {tuple(self.strides)}.")
    total = None
    for i, (x, stride) in enumerate(zip(pyramid, self.strides)):
      ups = int(round(math.log2(stride / self.strides[0])))
      for k in range(max(1, ups)):
        x = nn.Conv(self.channels, (3, 3), padding=1, use_bias=False, dtype=self.dtype,
                    param_dtype=self.param_dtype, name=f"scale_{i}_conv_{k}")(x)
        x = nn.GroupNorm(self.num_groups, epsilon=1e-5, dtype=jnp.float32, param_dtype=self.param_dtype,
                         name=f"scale_{i}_norm_{k}")(x)
        x = nn.relu(x)
        x = upsample2x(x) if k < ups else x
      total = x if total is None else total + x
    return nn.Conv(self.num_classes, (1, 1), dtype=jnp.float32, param_dtype=self.param_dtype, name="classifier")(total)
