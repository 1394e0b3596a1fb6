"""Layer-wise learning-rate decay for fine-tuning (BEiT, Bao et al. 2022; ConvNeXt; timm's
`--layer-decay`): parameter group l of L gets the learning rate scaled by decay^(L-1-l), so the
stem moves least and the head at the full rate.

The groups follow timm's FocalNet (`FocalNet.group_matcher` with `param_groups_layer_decay`):
the stem (patch embedding) is layer 0, then every block is its own layer in forward order, a
downsample joining the first block of the stage it feeds (timm places it at the start of that
stage; ours ends the stage before), the final LayerNorm joining the last block, then the head
(and anything else) last. The scale multiplies the optimizer's whole update, so decoupled weight decay, which AdamW
scales by the learning rate, is scaled with it, as in a PyTorch parameter group's `lr`.
"""
from __future__ import annotations

import re
from typing import Any

import jax
import optax

_LAST = (float("inf"),)  # timm's ordinal for what its group matcher does not name (the head)
_JOIN_PREVIOUS = 99999.0  # timm's MATCH_PREV_GROUP: an ordinal ending in it joins the group before


def _ordinal(path: tuple[str, ...]) -> tuple[float, ...]:
  """timm's sort key of a parameter's group: () stem, (stage, block), final norm (joins the previous
  group), inf the rest."""
  first = path[0]
  if first == "patch_embed":
    return ()
  stage = re.fullmatch(r"layers_(\d+)", first)
  if stage and len(path) > 1:
    i = int(stage.group(1))
    if path[1] == "downsample":
      return (i + 1.0, 0.0)
    block = re.fullmatch(r"blocks_(\d+)", path[1])
    if block:
      return (float(i), float(block.group(1)))
  if first == "norm":
    return (_JOIN_PREVIOUS,)
  return _LAST


def _path(keys) -> tuple[str, ...]:
  return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in keys)


def layer_ids(params: Any) -> Any:
  """The tree of `params` with each leaf replaced by its layer (0 = stem, the head the last)."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  ordinals = [_ordinal(_path(p)) for p, _ in leaves]
  index, layer = {}, -1
  for o in sorted(set(ordinals)):
    if layer < 0 or o[-1] != _JOIN_PREVIOUS:
      layer += 1
    index[o] = layer
  return jax.tree_util.tree_unflatten(treedef, [index[o] for o in ordinals])


def lr_scales(params: Any, decay: float) -> Any:
  """Each parameter's learning-rate scale, decay^(layers - 1 - layer)."""
  ids = layer_ids(params)
  last = max(jax.tree_util.tree_leaves(ids))
  return jax.tree.map(lambda i: decay ** (last - i), ids)


def scale_by_layer(decay: float) -> optax.GradientTransformation:
  """Multiplies each parameter's update by its `lr_scales` (computed from the tree's paths when
  traced: no state, nothing to shard)."""

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, s: u * s, updates, lr_scales(updates, decay)), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)
