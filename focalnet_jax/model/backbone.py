"""FocalNet as the backbone of a detector or segmenter (docs/model.md, "Network").

The conventions are timm's `features_only` and the official detection backbone
(microsoft/FocalNet `detection/`): the output of stage i is its blocks' output, before the
downsample, at stride `patch_size * 2**i` with `embed_dim * 2**i` channels; `out_indices` picks
the stages; `out_norms` adds the detection backbone's per-output LayerNorms `norm0`..`norm3`.
(HF's `FocalNetBackbone` differs: its `stem` is the patch embedding and its `stage{i}` the
output of stage i - 1 after its downsample, so only the last stage coincides.)

Any input size runs: sides that are not multiples of the network's stride are zero-padded at the
bottom and right, as HF pads, and each output says which top-left part of it is valid.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import struct

from focalnet_jax.model import execution as execution_lib
from focalnet_jax.model.layers import layer_norm
from focalnet_jax.model.network import FocalNet
from focalnet_jax.model.variants import model_kwargs

# The official detection backbones' own settings (detection/configs): focal window 9 at every
# level count, so kernels 9, 11, 13 with three levels, and the conv stem padded by 3, not 2.
DETECTION_SETTINGS = dict(focal_windows=9, conv_stem_padding=3)


class FeatureInfo(NamedTuple):
  """One output: its stage, channels and stride (timm's `num_chs` and `reduction`)."""

  stage: int
  channels: int
  stride: int


class FeatureMaps(struct.PyTreeNode):
  """The selected stage maps (B, H_i, W_i, C_i); `valid_sizes[k]` is the (height, width) of
  `maps[k]`'s top-left part computed from the image, the rest comes from padding.

  Indexes and iterates like the tuple of maps. `valid_sizes` is static (not a pytree leaf), so it
  survives `jax.jit`.
  """

  maps: tuple[jax.Array, ...]
  valid_sizes: tuple[tuple[int, int], ...] = struct.field(pytree_node=False)

  def __getitem__(self, index: int) -> jax.Array:
    return self.maps[index]

  def __len__(self) -> int:
    return len(self.maps)

  def __iter__(self):
    return iter(self.maps)


class FocalNetBackbone(FocalNet):
  """FocalNet without its head, returning the maps of the stages in `out_indices`.

  Parameters are named as the classifier's (`patch_embed`, `layers_i`) plus `norm{i}` for each
  output when `out_norms`, as in the official detection backbone; stages after the last output
  are not built. `conv_stem_padding` is the conv stem's padding (`use_conv_embed`): 2 in the
  classifiers, 3 in the official detection code.
  """

  num_classes: int = 0
  out_indices: Sequence[int] = (0, 1, 2, 3)
  out_norms: bool = False
  conv_stem_padding: int = 2

  def __post_init__(self):
    if self.num_classes != 0:
      raise ValueError(f"A backbone has no head: num_classes={self.num_classes} must be 0.")
    n = len(self.depths) if not isinstance(self.depths, int) else 0
    indices = tuple(self.out_indices) if not isinstance(self.out_indices, int) else None
    if not indices or len(set(indices)) != len(indices) or any(not -n <= i < n for i in indices):
      raise ValueError(f"out_indices={self.out_indices!r} must be distinct stage indices in [0, {n}) "
                       f"(or counted from the end, as -1); this model has {n} stages.")
    object.__setattr__(self, "out_indices", tuple(sorted(i % n for i in indices)))
    super().__post_init__()

  @property
  def feature_info(self) -> tuple[FeatureInfo, ...]:
    """Channels and stride of each output, in output order."""
    return tuple(FeatureInfo(i, self.stage_dims[i], self.patch_size * 2**i) for i in self.out_indices)

  def stem_geometry(self) -> tuple[int, int, int]:
    if self.use_conv_embed:
      return 7, 4, self.conv_stem_padding
    return super().stem_geometry()

  def valid_sizes(self, height: int, width: int) -> tuple[tuple[int, int], ...]:
    """(height, width) of each output's part that the unpadded image determines."""
    return tuple((-(-height // f.stride), -(-width // f.stride)) for f in self.feature_info)

  def setup(self):
    super().setup()
    # Each output's LayerNorm writes norm_dtype, the dtype its input (the residual stream) has: the
    # maps come out in one dtype with or without out_norms.
    for i in self.out_indices if self.out_norms else ():
      setattr(self, f"norm{i}", layer_norm(f"norm{i}", self.param_dtype, self.norm_dtype))

  def __call__(self, images: jax.Array, train: bool = False) -> FeatureMaps:
    if images.ndim != 4:
      raise ValueError(f"Expected NHWC images of rank 4, got shape {images.shape}.")
    height, width = images.shape[1:3]
    images = pad_to_multiple(images, self.stride)
    x = self.embed(images, train)
    maps = []
    for i in range(self.out_indices[-1] + 1):
      feats, x = self.run_stage(x, i, train)
      if i in self.out_indices:
        maps.append(getattr(self, f"norm{i}")(feats) if self.out_norms else feats)
    return FeatureMaps(tuple(maps), self.valid_sizes(height, width))


def pad_to_multiple(images: jax.Array, multiple: int) -> jax.Array:
  """Zero-pads the bottom and right of NHWC `images` to sides that are multiples of `multiple`."""
  pad_h, pad_w = (-images.shape[1]) % multiple, (-images.shape[2]) % multiple
  if not pad_h and not pad_w:
    return images
  return jnp.pad(images, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))


def create_backbone(name: str, *, detection: bool = False, **overrides: Any) -> FocalNetBackbone:
  """Variant `name` as a backbone; `detection=True` applies the official detection settings
  (`DETECTION_SETTINGS`) before `overrides`. E.g. `create_backbone('focalnet_tiny_lrf',
  out_indices=(1, 2, 3), out_norms=True, detection=True)`."""
  overrides = dict(overrides)
  kwargs = model_kwargs(name, num_classes=0, execution=execution_lib.take(overrides, "create_backbone"))
  kwargs.update(DETECTION_SETTINGS if detection else {})
  kwargs.update(overrides)
  return FocalNetBackbone(**kwargs)


def backbone_from_meta(meta: dict[str, Any], **overrides: Any) -> FocalNetBackbone:
  """The backbone a converted backbone checkpoint describes (`python -m focalnet_jax.tools.convert
  --backbone` writes `{'model', 'model_overrides', 'backbone': {out_indices, out_norms,
  detection}}`), with `overrides` (e.g. `execution`) applied last."""
  if "backbone" not in meta:
    raise ValueError(f"The checkpoint of {meta.get('model')!r} is not a backbone checkpoint (no 'backbone' in its "
                     "meta): load it as a classifier and take classifier_params(params).")
  settings = dict(meta["backbone"])
  kwargs = {**meta.get("model_overrides", {}), "out_indices": tuple(settings["out_indices"]),
            "out_norms": settings["out_norms"], **overrides}
  return create_backbone(meta["model"], detection=settings.get("detection", False), **kwargs)


def classifier_params(params: dict[str, Any]) -> dict[str, Any]:
  """A classifier's params without what a backbone lacks (the final `norm` and the `head`)."""
  return {k: v for k, v in params.items() if k not in ("norm", "head")}
