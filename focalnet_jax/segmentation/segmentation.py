"""Semantic segmentation on the backbone API: `FocalNetBackbone` -> `FPN` -> `SemanticFPNHead`,
per-pixel logits upsampled (bilinear) to the input size, and a pixel-wise cross-entropy that skips
an ignore index. Parameters: `backbone` (a converted or adapted backbone's params drop in as they
are), `neck`, `head`.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from focalnet_jax.segmentation.fpn import FPN
from focalnet_jax.segmentation.seg_head import SemanticFPNHead
from focalnet_jax.model.backbone import FocalNetBackbone


class SegmentationModel(nn.Module):
  """Images (B, H, W, 3) of any size -> logits (B, H, W, num_classes), float32.

  The backbone pads H and W to multiples of its stride (bottom/right); the head's logits, at the
  stride of the backbone's first output, are upsampled to the padded size and cropped back to
  H x W, so each pixel's logits come from the grid cell that covers it.
  """

  backbone: FocalNetBackbone
  num_classes: int
  fpn_channels: int = 256
  head_channels: int = 128
  head_groups: int = 32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    height, width = images.shape[1:3]
    maps = self.backbone(images, train)
    strides = [f.stride for f in self.backbone.feature_info]
    dtype, param_dtype = self.backbone.dtype, self.backbone.param_dtype
    pyramid = FPN(self.fpn_channels, dtype, param_dtype, name="neck")(maps.maps)
    logits = SemanticFPNHead(self.num_classes, self.head_channels, strides, self.head_groups, dtype, param_dtype,
                             name="head")(pyramid)
    b, h, w, k = logits.shape
    logits = jax.image.resize(logits.astype(jnp.float32), (b, h * strides[0], w * strides[0], k), "bilinear")
    return logits[:, :height, :width]


def cross_entropy_sums(logits: jax.Array, labels: jax.Array, ignore_index: int) -> tuple[jax.Array, jax.Array]:
  """(sum of per-pixel cross-entropies, number of pixels counted) over pixels whose label is not
  `ignore_index`; carried as a pair so means stay exact across batches and hosts."""
  valid = labels != ignore_index
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(log_probs, jnp.where(valid, labels, 0)[..., None], axis=-1)[..., 0]
  return -jnp.sum(jnp.where(valid, picked, 0.0)), jnp.sum(valid)


def pixel_cross_entropy(logits: jax.Array, labels: jax.Array, ignore_index: int) -> jax.Array:
  """Mean cross-entropy over the pixels not labelled `ignore_index` (0 if there are none)."""
  total, count = cross_entropy_sums(logits, labels, ignore_index)
  return total / jnp.maximum(count, 1)


def confusion_matrix(logits: jax.Array, labels: jax.Array, num_classes: int, ignore_index: int) -> jax.Array:
  """(num_classes, num_classes) counts of (label, prediction) over the counted pixels."""
  valid = labels != ignore_index
  index = (jnp.where(valid, labels, 0) * num_classes + jnp.argmax(logits, -1)).reshape(-1)
  return jnp.bincount(index, weights=valid.reshape(-1).astype(jnp.int32), length=num_classes * num_classes).reshape(num_classes, num_classes)


def mean_iou(confusion: jax.Array) -> jax.Array:
  """Mean over the classes present (in labels or predictions) of intersection / union."""
  inter = jnp.diag(confusion)
  union = confusion.sum(0) + confusion.sum(1) - inter
  return jnp.sum(jnp.where(union > 0, inter / jnp.maximum(union, 1), 0.0)) / jnp.maximum(jnp.sum(union > 0), 1)
