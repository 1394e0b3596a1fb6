"""A feature pyramid neck (Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017),
as mmdet's `FPN` builds it for FocalNet's detectors: a lateral 1x1 conv per backbone output, a
top-down pathway that upsamples each coarser map (nearest) and adds it to the next finer lateral,
then a 3x3 output conv per level. Every level has `channels` channels and keeps its input's stride.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def resize_nearest(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """NHWC `x` resized to `size` by nearest neighbour with PyTorch's `interpolate(mode='nearest')`
  rule (source index floor(dst * in / out)), which mmdet's FPN uses; exact for any ratio."""
  (h, w), (out_h, out_w) = x.shape[1:3], size
  rows = (jnp.arange(out_h) * h) // out_h
  cols = (jnp.arange(out_w) * w) // out_w
  return x[:, rows][:, :, cols]


class FPN(nn.Module):
  """Feature pyramid over backbone maps ordered fine to coarse: `channels` maps at the same strides.

  Parameter names: `lateral_{i}` (1x1 conv) and `output_{i}` (3x3 conv), i in input order.
  Convs are Xavier-uniform initialised with zero bias, as mmdet's FPN.
  """

  channels: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, features: Sequence[jax.Array]) -> tuple[jax.Array, ...]:
    conv = lambda k, name: nn.Conv(self.channels, (k, k), padding=k // 2, kernel_init=nn.initializers.xavier_uniform(),
                                   dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    laterals = [conv(1, f"lateral_{i}")(f) for i, f in enumerate(features)]
    for i in range(len(laterals) - 1, 0, -1):  # top-down: the coarser map, upsampled, added to the finer
      laterals[i - 1] = laterals[i - 1] + resize_nearest(laterals[i], laterals[i - 1].shape[1:3])
    return tuple(conv(3, f"output_{i}")(x) for i, x in enumerate(laterals))
