"""Focal Modulation Networks (Yang et al., NeurIPS 2022) in Flax linen: the block, the stage and
the network (docs/model.md, "Block", "Stage", "Network").

Read top-down as in the paper: the block that wraps focal modulation (`modulation.py`), a stage
of blocks followed by a downsample, and the network of patch embedding, stages and head.
Tensors are NHWC throughout. Parameter names follow the official PyTorch code
(`layers_i/blocks_j/modulation/focal_layers_l`, ...), so conversion is a renaming.

Mixed precision: `dtype` is the compute dtype of convs and dense layers, `param_dtype`
the storage dtype. LayerNorms, the global-context mean, the head's pooling and the
logits are computed in float32 whatever `dtype` is. LayerNorms write `norm_dtype`: float32 by
default (PyTorch AMP's choice), or bfloat16, which halves the bytes of the residual stream: the
stream x <- x + γ·branch carries the dtype the stem's LayerNorm writes, stage after stage. The
head (final LayerNorm, pooling, logits) stays float32 whatever `norm_dtype` is.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from focalnet_jax.kernels import remat as remat_lib
from focalnet_jax.model.execution import Execution
from focalnet_jax.model.layers import DropPath, Downsample, Mlp, dense_init, layer_norm, resolve_norm_dtype
from focalnet_jax.model.modulation import FocalModulation
from focalnet_jax.model.validation import IntOrSeq, nearest_multiples, per_stage, validate

Dtype = Any


class FocalNetBlock(nn.Module):
  """Pre-norm residual block: x + γ1·modulation(norm1(x)), then x + γ2·mlp(norm2(x)).

  With `use_postln` the norms move onto the branch outputs: x + γ1·norm1(modulation(x)).
  """

  focal_level: int
  focal_window: int
  focal_factor: int = 2
  mlp_ratio: float = 4.0
  drop_rate: float = 0.0
  drop_path_rate: float = 0.0
  use_layerscale: bool = False
  layerscale_value: float = 1e-4
  use_postln: bool = False
  use_postln_in_modulation: bool = False
  normalize_modulator: bool = False
  use_global_context: bool = True
  use_gating: bool = True
  interaction: str = "multiply"
  execution: Execution = Execution()
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  norm_dtype: Dtype | None = None

  def __post_init__(self):
    object.__setattr__(self, "execution", self.execution.resolve())
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    c = x.shape[-1]
    modulation = FocalModulation(
        focal_level=self.focal_level,
        focal_window=self.focal_window,
        focal_factor=self.focal_factor,
        normalize_modulator=self.normalize_modulator,
        use_postln_in_modulation=self.use_postln_in_modulation,
        use_global_context=self.use_global_context,
        use_gating=self.use_gating,
        interaction=self.interaction,
        drop_rate=self.drop_rate,
        execution=self.execution,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        norm_dtype=self.norm_dtype,
        name="modulation",
    )
    mlp = Mlp(int(c * self.mlp_ratio), self.drop_rate, self.dtype, self.param_dtype, name="mlp")
    norm1 = layer_norm("norm1", self.param_dtype, self.norm_dtype)
    norm2 = layer_norm("norm2", self.param_dtype, self.norm_dtype)
    drop_path = DropPath(self.drop_path_rate)

    def scale(name: str) -> jax.Array | float:
      if not self.use_layerscale:
        return 1.0
      return self.param(name, nn.initializers.constant(self.layerscale_value), (c,), self.param_dtype)

    def residual(x: jax.Array, gamma: jax.Array | float, branch: jax.Array) -> jax.Array:
      # The stream keeps its dtype (what the stem's LayerNorm wrote): a float32 γ would otherwise
      # promote a bfloat16 stream back to float32. A no-op on a float32 stream.
      return x + drop_path(gamma * branch, train).astype(x.dtype)

    gamma_1, gamma_2 = scale("gamma_1"), scale("gamma_2")
    if self.use_postln:
      x = residual(x, gamma_1, norm1(modulation(x, train)))
      x = residual(x, gamma_2, norm2(mlp(x, train)))
    else:
      x = residual(x, gamma_1, modulation(norm1(x), train))
      x = residual(x, gamma_2, mlp(norm2(x), train))
    return x


class FocalNetStage(nn.Module):
  """`depth` blocks at constant width, then (except in the last stage) a downsample.

  Returns (features, next): the blocks' output, which is the stage's feature map for
  dense-prediction heads, and the input of the next stage. Every op in a stage acts on each
  example alone, which is what lets `kernels.chunking` run a stage over pieces of the batch.
  """

  depth: int
  out_dim: int | None  # width after the downsample; None: no downsample (last stage)
  block_kwargs: dict
  drop_path_rates: Sequence[float]
  use_conv_embed: bool = False
  execution: Execution = Execution()  # its `remat` policy applies to each block
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  norm_dtype: Dtype | None = None

  def __post_init__(self):
    object.__setattr__(self, "execution", self.execution.resolve())
    super().__post_init__()

  def setup(self):
    block_cls = remat_lib.wrap(FocalNetBlock, self.execution.remat, static_argnums=(2,))
    self.blocks = [
        block_cls(drop_path_rate=self.drop_path_rates[j], execution=self.execution, dtype=self.dtype,
                  param_dtype=self.param_dtype, norm_dtype=self.norm_dtype, **self.block_kwargs)
        for j in range(self.depth)
    ]
    if self.out_dim is not None:
      k, s, p = (3, 2, 1) if self.use_conv_embed else (2, 2, 0)
      self.downsample = Downsample(self.out_dim, k, s, p, self.dtype, self.param_dtype, self.norm_dtype)

  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    for block in self.blocks:
      x = block(x, train)
    return x, (self.downsample(x) if self.out_dim is not None else x)


class FocalNet(nn.Module):
  """The FocalNet network: patch embedding, stages, LayerNorm, mean pool, linear head.

  `focal_levels` and `focal_windows` take one int for all stages or one per stage.
  `__call__` returns logits (B, num_classes) in float32, or pooled features (B, C) when
  `num_classes == 0`; `features` returns the stage maps (strides 4/8/16/32).
  `__call__` is `embed`, then `run_stage` for each stage, then `head_from_tokens`; those
  pieces are public so that `kernels.chunking` can run each stage over pieces of the batch.
  `execution` (model/execution.py: depthwise conv, focal context, remat, `f` layout, inference
  chunks) is resolved when the model is built ('auto' made concrete); it never changes the values.
  """

  num_classes: int = 1000
  embed_dim: int = 96
  depths: Sequence[int] = (2, 2, 6, 2)
  patch_size: int = 4
  focal_levels: IntOrSeq = 2
  focal_windows: IntOrSeq = 3
  focal_factor: int = 2
  mlp_ratio: float = 4.0
  drop_rate: float = 0.0
  drop_path_rate: float = 0.1
  use_conv_embed: bool = False
  use_layerscale: bool = False
  layerscale_value: float = 1e-4
  use_postln: bool = False
  use_postln_in_modulation: bool = False
  normalize_modulator: bool = False
  # The paper's ablations (Table 7): remove the global context / the gating, or replace
  # the multiplicative interaction by addition.
  use_global_context: bool = True
  use_gating: bool = True
  interaction: str = "multiply"
  # Compute and storage dtypes.
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  # Numerics, not execution: what the trunk's LayerNorms write and so the residual stream's dtype
  # (None: float32; 'bfloat16' moves fewer bytes and changes values; see the module docstring).
  norm_dtype: Dtype | None = None
  # How it runs, not what it computes (model/execution.py).
  execution: Execution = Execution()

  def __post_init__(self):
    validate(self)
    # Resolved once here, not per call: the model then names what it runs.
    object.__setattr__(self, "execution", self.execution.resolve())
    object.__setattr__(self, "norm_dtype", resolve_norm_dtype(self.norm_dtype))
    super().__post_init__()

  @property
  def num_stages(self) -> int:
    return len(self.depths)

  @property
  def stage_dims(self) -> tuple[int, ...]:
    return tuple(self.embed_dim * 2**i for i in range(self.num_stages))

  @property
  def num_features(self) -> int:
    return self.stage_dims[-1]

  @property
  def stride(self) -> int:
    """Total downsampling: input sides must be multiples of this."""
    return self.patch_size * 2 ** (self.num_stages - 1)

  def with_execution(self, **switches: Any) -> "FocalNet":
    """The same network (same parameters and values) with the named execution switches changed,
    e.g. `model.with_execution(depthwise='xla', remat='dots')`."""
    return self.clone(execution=dataclasses.replace(self.execution, **switches))

  def with_reference_execution(self) -> "FocalNet":
    """The same network run the plain way every backend supports (same parameters and values):
    `Execution.reference()`. `dtype` and `norm_dtype` are kept: they change the values, so they
    are the model's, not how it runs."""
    return self.clone(execution=Execution.reference())

  def check_image_size(self, height: int, width: int) -> None:
    """Raises ValueError, with the nearest valid sides, unless both sides are multiples of `stride`."""
    s = self.stride
    if height % s or width % s or height < s or width < s:
      nearest = sorted(set(nearest_multiples(height, s)) | set(nearest_multiples(width, s)))
      common = [v for v in (224, 256, 288, 384, 512) if v % s == 0]
      raise ValueError(
          f"Image size {height}x{width} does not fit this FocalNet: height and width must be "
          f"positive multiples of {s} (patch_size {self.patch_size} x 2^{self.num_stages - 1} "
          f"downsamplings). Nearest valid sides: {', '.join(map(str, nearest))}; common sizes: "
          f"{', '.join(map(str, common))}. Resize or crop the images to such a size."
      )

  def stem_geometry(self) -> tuple[int, int, int]:
    """(kernel, stride, padding) of the patch-embedding conv: 7/4/2 with `use_conv_embed`, else
    kernel = stride = patch_size."""
    if self.use_conv_embed:
      return 7, 4, 2
    return self.patch_size, self.patch_size, 0

  def setup(self):
    n = self.num_stages
    levels = per_stage(self.focal_levels, n, "focal_levels")
    windows = per_stage(self.focal_windows, n, "focal_windows")
    rates = np.linspace(0.0, self.drop_path_rate, sum(self.depths)).tolist()
    k, s, p = self.stem_geometry()
    self.patch_embed = Downsample(self.embed_dim, k, s, p, self.dtype, self.param_dtype, self.norm_dtype)
    self.pos_drop = nn.Dropout(self.drop_rate)
    stages = []
    for i in range(n):
      block_kwargs = dict(
          focal_level=levels[i],
          focal_window=windows[i],
          focal_factor=self.focal_factor,
          mlp_ratio=self.mlp_ratio,
          drop_rate=self.drop_rate,
          use_layerscale=self.use_layerscale,
          layerscale_value=self.layerscale_value,
          use_postln=self.use_postln,
          use_postln_in_modulation=self.use_postln_in_modulation,
          normalize_modulator=self.normalize_modulator,
          use_global_context=self.use_global_context,
          use_gating=self.use_gating,
          interaction=self.interaction,
      )
      start = sum(self.depths[:i])
      stages.append(
          FocalNetStage(
              depth=self.depths[i],
              out_dim=self.stage_dims[i + 1] if i + 1 < n else None,
              block_kwargs=block_kwargs,
              drop_path_rates=tuple(rates[start : start + self.depths[i]]),
              use_conv_embed=self.use_conv_embed,
              execution=self.execution,
              dtype=self.dtype,
              param_dtype=self.param_dtype,
              norm_dtype=self.norm_dtype,
          )
      )
    self.layers = stages
    # The head's LayerNorm writes float32 whatever norm_dtype: the head is float32 throughout, and its
    # input (stride 32) is too small for its bytes to matter.
    self.norm = layer_norm("norm", self.param_dtype)
    if self.num_classes > 0:
      self.head = nn.Dense(
          self.num_classes, kernel_init=dense_init, dtype=jnp.float32, param_dtype=self.param_dtype
      )

  def embed(self, images: jax.Array, train: bool = False) -> jax.Array:
    """Checks the images and embeds them: (B, H, W, 3) -> tokens (B, H/p, W/p, embed_dim)."""
    if images.ndim != 4:
      raise ValueError(f"Expected NHWC images of rank 4, got shape {images.shape}.")
    self.check_image_size(images.shape[1], images.shape[2])
    x = self.patch_embed(images.astype(self.dtype))
    return self.pos_drop(x, deterministic=not train)

  def run_stage(self, x: jax.Array, index: int, train: bool = False) -> tuple[jax.Array, jax.Array]:
    """Stage `index` on tokens `x`: (its feature map, the next stage's input)."""
    return self.layers[index](x, train)

  def head_from_tokens(self, x: jax.Array) -> jax.Array:
    """The last stage's output -> LayerNorm, mean over tokens (float32), linear head."""
    pooled = jnp.mean(self.norm(x).astype(jnp.float32), axis=(1, 2))
    if self.num_classes == 0:
      return pooled
    return self.head(pooled)

  def features(self, images: jax.Array, train: bool = False) -> list[jax.Array]:
    """The output of each stage's blocks: (B, H/4, W/4, C), ..., (B, H/32, W/32, 8C)."""
    return self._forward(images, train)[0]

  def forward_features(self, images: jax.Array, train: bool = False) -> jax.Array:
    """The final normalised token map (B, H/32, W/32, C_last), in float32."""
    return self.norm(self._forward(images, train)[1])

  def _forward(self, images: jax.Array, train: bool) -> tuple[list[jax.Array], jax.Array]:
    x = self.embed(images, train)
    stage_maps = []
    for i in range(self.num_stages):
      feats, x = self.run_stage(x, i, train)
      stage_maps.append(feats)
    return stage_maps, x

  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    return self.head_from_tokens(self._forward(images, train)[1])
