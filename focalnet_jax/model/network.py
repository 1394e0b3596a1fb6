"""Focal Modulation Networks (Yang et al., NeurIPS 2022) in Flax linen.

Read top-down as in the paper: focal modulation (Sec. 3.2), the block that wraps it,
a stage of blocks followed by a downsample, the patch embedding, and the network.
Tensors are NHWC throughout. Parameter names follow the official PyTorch code
(`layers_i/blocks_j/modulation/focal_layers_l`, ...), so conversion is a renaming.

Mixed precision: `dtype` is the compute dtype of convs and dense layers, `param_dtype`
the storage dtype. LayerNorms, the global-context mean, the head's pooling and the
logits are computed in float32 whatever `dtype` is.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from focalnet_jax.kernels import depthwise

Dtype = Any
IntOrSeq = int | Sequence[int]

# --- initialisers (the official code's) -------------------------------------------------
# Dense layers: truncated normal, std 0.02, zero bias.
dense_init = nn.initializers.truncated_normal(stddev=0.02)
# Convolutions keep PyTorch's default: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
conv_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def conv_bias_init(fan_in: int) -> nn.initializers.Initializer:
  bound = 1.0 / np.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def gelu(x: jax.Array) -> jax.Array:
  """Exact GELU, x * Phi(x), written as PyTorch's CPU kernel writes it: 0.5 x (1 + erf(x / sqrt 2)).

  Flax's `nn.gelu(approximate=False)` goes through erfc, which XLA:CPU lowers to an
  exp-based expansion about 2.7x slower than its erf polynomial; the two agree to float32
  rounding (and this form is PyTorch's). Flax's default is the tanh approximation.
  """
  return x * (0.5 * (1.0 + lax.erf(x * np.asarray(1.0 / np.sqrt(2.0), x.dtype))))


def layer_norm(name: str, param_dtype: Dtype) -> nn.LayerNorm:
  """LayerNorm with PyTorch's eps, always computed in float32."""
  return nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, param_dtype=param_dtype, name=name)


def per_stage(value: IntOrSeq, num_stages: int, field: str) -> tuple[int, ...]:
  """Broadcasts an int to one value per stage; checks a sequence has one per stage."""
  if isinstance(value, (int, np.integer)):
    return (int(value),) * num_stages
  value = tuple(int(v) for v in value)
  if len(value) != num_stages:
    raise ValueError(
        f"{field}={value} has {len(value)} entries but the model has {num_stages} stages "
        f"(depths has {num_stages} entries); give one value per stage or a single int."
    )
  return value


class DropPath(nn.Module):
  """Stochastic depth: drops the whole residual branch per sample, scaling by 1/keep."""

  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if not train or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    # A per-sample scale (0 or 1/keep) fuses into the residual add as one multiply.
    return x * (mask.astype(x.dtype) / jnp.asarray(keep, x.dtype))


class Mlp(nn.Module):
  hidden_dim: int
  drop_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    dim = x.shape[-1]
    dense = functools.partial(nn.Dense, kernel_init=dense_init, dtype=self.dtype, param_dtype=self.param_dtype)
    x = gelu(dense(self.hidden_dim, name="fc1")(x))
    x = nn.Dropout(self.drop_rate)(x, deterministic=not train)
    x = dense(dim, name="fc2")(x)
    return nn.Dropout(self.drop_rate)(x, deterministic=not train)


class FocalModulation(nn.Module):
  """y = q(x) * h(sum_l gate_l * ctx_l + gate_L * ctx_global), then a projection.

  `focal_levels` depthwise convs of growing kernel (focal_window + focal_factor * l) are
  stacked, so level l sees a (sum of kernels)-wide neighbourhood; the global context is the
  GELU of the spatial mean of the last level. The ablation switches of the paper:
  `use_global_context=False` drops the global term, `use_gating=False` sums the levels
  unweighted (and `f` emits no gate channels), `interaction='add'` uses q + modulator.
  """

  focal_level: int
  focal_window: int
  focal_factor: int = 2
  normalize_modulator: bool = False
  use_postln_in_modulation: bool = False
  use_global_context: bool = True
  use_gating: bool = True
  interaction: str = "multiply"
  drop_rate: float = 0.0
  depthwise_impl: str = "auto"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def num_gates(self) -> int:
    return (self.focal_level + int(self.use_global_context)) if self.use_gating else 0

  def kernel_sizes(self) -> tuple[int, ...]:
    return tuple(self.focal_factor * l + self.focal_window for l in range(self.focal_level))

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    c = x.shape[-1]
    L = self.focal_level
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
    x = dense(2 * c + self.num_gates(), kernel_init=dense_init, name="f")(x)
    q, ctx, gates = jnp.split(x, [c, 2 * c], axis=-1)

    def gated(term: jax.Array, level: int) -> jax.Array:
      return term * gates[..., level : level + 1] if self.use_gating else term

    ctx_all = jnp.zeros_like(ctx)
    for level, k in enumerate(self.kernel_sizes()):
      kernel = self.param(f"focal_layers_{level}", conv_init, (k, k, 1, c), self.param_dtype)
      ctx = gelu(depthwise.depthwise_conv(ctx, kernel.astype(self.dtype), self.depthwise_impl))
      ctx_all = ctx_all + gated(ctx, level)
    if self.use_global_context:
      mean = jnp.mean(ctx.astype(jnp.float32), axis=(1, 2), keepdims=True)
      ctx_global = gelu(mean).astype(self.dtype)
      ctx_all = ctx_all + gated(ctx_global, L)
    if self.normalize_modulator:
      ctx_all = ctx_all / (L + int(self.use_global_context))

    modulator = dense(c, kernel_init=conv_init, bias_init=conv_bias_init(c), name="h")(ctx_all)
    # Exposed for visualisation (`mutable=['intermediates']`); no effect on the output.
    self.sow("intermediates", "modulator", modulator)
    if self.use_gating:
      self.sow("intermediates", "gates", gates)
    out = q * modulator if self.interaction == "multiply" else q + modulator
    if self.use_postln_in_modulation:
      out = layer_norm("ln", self.param_dtype)(out)
    out = dense(c, kernel_init=dense_init, name="proj")(out)
    return nn.Dropout(self.drop_rate)(out, deterministic=not train)


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
  depthwise_impl: str = "auto"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

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
        depthwise_impl=self.depthwise_impl,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name="modulation",
    )
    mlp = Mlp(int(c * self.mlp_ratio), self.drop_rate, self.dtype, self.param_dtype, name="mlp")
    norm1 = layer_norm("norm1", self.param_dtype)
    norm2 = layer_norm("norm2", self.param_dtype)
    drop_path = DropPath(self.drop_path_rate)

    def scale(name: str) -> jax.Array | float:
      if not self.use_layerscale:
        return 1.0
      return self.param(name, nn.initializers.constant(self.layerscale_value), (c,), self.param_dtype)

    gamma_1, gamma_2 = scale("gamma_1"), scale("gamma_2")
    if self.use_postln:
      x = x + drop_path(gamma_1 * norm1(modulation(x, train)), train)
      x = x + drop_path(gamma_2 * norm2(mlp(x, train)), train)
    else:
      x = x + drop_path(gamma_1 * modulation(norm1(x), train), train)
      x = x + drop_path(gamma_2 * mlp(norm2(x), train), train)
    return x


class Downsample(nn.Module):
  """Strided conv to the next stage's width, then LayerNorm (the official 'PatchEmbed').

  Used both as the stem (kernel = stride = patch_size; 7/4/pad 2 with conv embedding) and
  between stages (2/2; 3/2/pad 1 with conv embedding). Padding is explicit and symmetric:
  'SAME' would pad asymmetrically and break parity with PyTorch weights.
  """

  features: int
  kernel_size: int
  stride: int
  padding: int = 0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = PatchConv(self.features, self.kernel_size, self.stride, self.padding, self.dtype,
                  self.param_dtype, name="proj")(x)
    return layer_norm("norm", self.param_dtype)(x)


class PatchConv(nn.Module):
  """A k x k stride-s convolution with bias, `nn.Conv`'s parameters and PyTorch's init.

  Non-overlapping windows (k == s, no padding) run as one matmul over patches
  (`depthwise.patch_conv`).
  """

  features: int
  kernel_size: int
  stride: int
  padding: int = 0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, cin = self.kernel_size, x.shape[-1]
    kernel = self.param("kernel", conv_init, (k, k, cin, self.features), self.param_dtype)
    bias = self.param("bias", conv_bias_init(cin * k * k), (self.features,), self.param_dtype)
    y = depthwise.patch_conv(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, self.padding)
    return y + bias.astype(self.dtype)


# Activation elements per chunk for 'auto' on CPU: 2**19 float32 (2 MiB, one core's L2 cache
# on the Zen 4 machines we measured) puts one 56x56x96 FocalNet-T stage-1 image in a chunk.
CACHE_CHUNK_ELEMENTS = 2**19


def auto_chunk_size(batch: int, elements_per_example: int, budget: int, num_devices: int = 1) -> int:
  """The largest chunk of examples within `budget` elements that divides the batch.

  Chunks are kept a multiple of `num_devices` where the batch allows, so that a batch
  sharded over devices splits evenly; at least one example (or device-multiple) per chunk.
  """
  divisors = [c for c in range(1, batch + 1) if batch % c == 0]
  even = [c for c in divisors if c % num_devices == 0] or [batch]
  fitting = [c for c in even if c * elements_per_example <= budget]
  return max(fitting) if fitting else min(even)


class FocalNetStage(nn.Module):
  """`depth` blocks at constant width, then (except in the last stage) a downsample.

  Returns (features, next): the blocks' output, which is the stage's feature map for
  dense-prediction heads, and the input of the next stage.

  `chunk_size` (examples; None or >= the batch: all at once) runs the stage over chunks of
  the batch in a loop. Every op in a stage acts on each example alone, so the result is
  the same; what changes is the working set. On CPU, a chunk whose activations fit in
  the cache runs about twice as fast as the whole batch (FocalNet-T's first stage at
  batch 8: 209 -> 90 ms; see `auto_chunk_size`). Training works too (gradients are tested
  equal) but is slower, so `FocalNet.chunk_elements='auto'` chunks inference only. Chunk m
  holds examples m, m + n, m + 2n, ... (n chunks), so a sharded batch stays where it is.
  """

  depth: int
  out_dim: int | None  # width after the downsample; None: no downsample (last stage)
  block_kwargs: dict
  drop_path_rates: Sequence[float]
  use_conv_embed: bool = False
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    block_cls = nn.remat(FocalNetBlock, static_argnums=(2,)) if self.remat else FocalNetBlock
    self.blocks = [
        block_cls(drop_path_rate=self.drop_path_rates[j], dtype=self.dtype,
                  param_dtype=self.param_dtype, **self.block_kwargs)
        for j in range(self.depth)
    ]
    if self.out_dim is not None:
      k, s, p = (3, 2, 1) if self.use_conv_embed else (2, 2, 0)
      self.downsample = Downsample(self.out_dim, k, s, p, self.dtype, self.param_dtype)

  def _run(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    for block in self.blocks:
      x = block(x, train)
    return x, (self.downsample(x) if self.out_dim is not None else x)

  def __call__(self, x: jax.Array, train: bool = False,
               chunk_size: int | None = None) -> tuple[jax.Array, jax.Array]:
    b = x.shape[0]
    # Sown intermediates keep the batch layout: no chunking when they are collected.
    if not chunk_size or chunk_size >= b or self.is_mutable_collection("intermediates"):
      return self._run(x, train)
    if b % chunk_size:
      raise ValueError(f"chunk_size={chunk_size} does not divide the batch size {b}.")
    n = b // chunk_size
    xs = x.reshape((chunk_size, n) + x.shape[1:]).swapaxes(0, 1)
    body = nn.scan(
        lambda stage, carry, xc: (carry, stage._run(xc, train)),
        variable_broadcast="params",
        split_rngs={"params": False, "dropout": True},
        length=n,
    )
    _, (features, nxt) = body(self, None, xs)
    merge = lambda y: y.swapaxes(0, 1).reshape((b,) + y.shape[2:])
    return merge(features), merge(nxt)


class FocalNet(nn.Module):
  """The FocalNet network: patch embedding, stages, LayerNorm, mean pool, linear head.

  `focal_levels` and `focal_windows` take one int for all stages or one per stage.
  `__call__` returns logits (B, num_classes) in float32, or pooled features (B, C) when
  `num_classes == 0`; `features` returns the stage maps (strides 4/8/16/32).
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
  # Implementation: compute/storage dtypes, per-block rematerialisation, depthwise conv.
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat: bool = False
  depthwise_impl: str = "auto"
  # Each stage runs over chunks of the batch holding at most this many activation
  # elements (examples x H x W x C) each; 0 runs whole batches. 'auto': CACHE_CHUNK_ELEMENTS
  # for inference on CPU, else 0 (accelerators want the whole batch at once).
  chunk_elements: int | str = "auto"

  def __post_init__(self):
    super().__post_init__()
    validate(self)

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

  def check_image_size(self, height: int, width: int) -> None:
    s = self.stride
    if height % s or width % s or height < s or width < s:
      nearest = sorted({max(s, v // s * s) for v in (height, width)} | {-(-v // s) * s for v in (height, width)})
      common = [v for v in (224, 256, 288, 384, 512) if v % s == 0]
      raise ValueError(
          f"Image size {height}x{width} does not fit this FocalNet: height and width must be "
          f"positive multiples of {s} (patch_size {self.patch_size} x 2^{self.num_stages - 1} "
          f"downsamplings). Nearest valid sides: {', '.join(map(str, nearest))}; common sizes: "
          f"{', '.join(map(str, common))}. Resize or crop the images to such a size."
      )

  def stage_chunk_size(self, shape: Sequence[int], train: bool = False) -> int | None:
    """Examples per chunk for a stage whose input has `shape` (B, H, W, C); None: all.

    'auto' chunks only inference on CPU: in training the loop must stack every chunk's
    residuals for the backward pass, which costs more than the cache saves (micro-batches,
    `sharding.accumulate_gradients`, are the way to train in cache-sized pieces).
    """
    budget = self.chunk_elements
    if budget == "auto":
      budget = CACHE_CHUNK_ELEMENTS if jax.default_backend() == "cpu" and not train else 0
    if not budget:
      return None
    return auto_chunk_size(shape[0], int(np.prod(shape[1:])), budget, jax.local_device_count())

  def stage_chunk_sizes(self, batch: int, height: int, width: int,
                        train: bool = False) -> tuple[int | None, ...]:
    """The chunk size each stage runs with for a (batch, height, width) input; None: all."""
    s = self.patch_size
    return tuple(
        self.stage_chunk_size((batch, height // (s * 2**i), width // (s * 2**i), dim), train)
        for i, dim in enumerate(self.stage_dims)
    )

  def setup(self):
    n = self.num_stages
    levels = per_stage(self.focal_levels, n, "focal_levels")
    windows = per_stage(self.focal_windows, n, "focal_windows")
    rates = np.linspace(0.0, self.drop_path_rate, sum(self.depths)).tolist()
    if self.use_conv_embed:
      k, s, p = 7, 4, 2
    else:
      k, s, p = self.patch_size, self.patch_size, 0
    self.patch_embed = Downsample(self.embed_dim, k, s, p, self.dtype, self.param_dtype)
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
          depthwise_impl=self.depthwise_impl,
      )
      start = sum(self.depths[:i])
      stages.append(
          FocalNetStage(
              depth=self.depths[i],
              out_dim=self.stage_dims[i + 1] if i + 1 < n else None,
              block_kwargs=block_kwargs,
              drop_path_rates=tuple(rates[start : start + self.depths[i]]),
              use_conv_embed=self.use_conv_embed,
              remat=self.remat,
              dtype=self.dtype,
              param_dtype=self.param_dtype,
          )
      )
    self.layers = stages
    self.norm = layer_norm("norm", self.param_dtype)
    if self.num_classes > 0:
      self.head = nn.Dense(
          self.num_classes, kernel_init=dense_init, dtype=jnp.float32, param_dtype=self.param_dtype
      )

  def features(self, images: jax.Array, train: bool = False) -> list[jax.Array]:
    """The output of each stage's blocks: (B, H/4, W/4, C), ..., (B, H/32, W/32, 8C)."""
    return self._forward(images, train)[0]

  def forward_features(self, images: jax.Array, train: bool = False) -> jax.Array:
    """The final normalised token map (B, H/32, W/32, C_last), in float32."""
    return self._forward(images, train)[1]

  def _forward(self, images: jax.Array, train: bool) -> tuple[list[jax.Array], jax.Array]:
    if images.ndim != 4:
      raise ValueError(f"Expected NHWC images of rank 4, got shape {images.shape}.")
    self.check_image_size(images.shape[1], images.shape[2])
    x = self.patch_embed(images.astype(self.dtype))
    x = self.pos_drop(x, deterministic=not train)
    stage_maps = []
    for stage in self.layers:
      feats, x = stage(x, train, chunk_size=self.stage_chunk_size(x.shape, train))
      stage_maps.append(feats)
    return stage_maps, self.norm(x)

  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    x = self.forward_features(images, train)
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    if self.num_classes == 0:
      return pooled
    return self.head(pooled)


def validate(model: FocalNet) -> None:
  """Raises ValueError naming the field and the fix for any invalid architecture value."""
  depths = tuple(model.depths)
  if not depths or any(int(d) < 1 for d in depths):
    raise ValueError(f"depths={depths} must be a non-empty sequence of positive ints.")
  n = len(depths)
  levels = per_stage(model.focal_levels, n, "focal_levels")
  windows = per_stage(model.focal_windows, n, "focal_windows")
  if any(l < 0 for l in levels):
    raise ValueError(f"focal_levels={levels} must be >= 0 (0 keeps only the global context).")
  if any(w < 1 or w % 2 == 0 for w in windows):
    raise ValueError(
        f"focal_windows={windows}: every focal window (the first level's kernel size) must be a "
        "positive odd int such as 3 or 5, so that 'same' padding of k // 2 keeps the map size."
    )
  if model.focal_factor < 0 or model.focal_factor % 2:
    raise ValueError(
        f"focal_factor={model.focal_factor} must be a non-negative even int (kernel sizes "
        "focal_window + focal_factor * l must stay odd)."
    )
  for name in ("embed_dim", "patch_size"):
    if int(getattr(model, name)) < 1:
      raise ValueError(f"{name}={getattr(model, name)} must be a positive int.")
  if model.num_classes < 0:
    raise ValueError(f"num_classes={model.num_classes} must be >= 0 (0 returns pooled features).")
  if not 0.0 <= model.drop_path_rate < 1.0 or not 0.0 <= model.drop_rate < 1.0:
    raise ValueError(
        f"drop_path_rate={model.drop_path_rate} and drop_rate={model.drop_rate} must lie in [0, 1)."
    )
  if model.mlp_ratio <= 0:
    raise ValueError(f"mlp_ratio={model.mlp_ratio} must be positive.")
  if model.interaction not in ("multiply", "add"):
    raise ValueError(f"interaction={model.interaction!r} must be 'multiply' or 'add'.")
  if not model.use_global_context and min(levels) == 0:
    raise ValueError(
        "use_global_context=False with focal_levels=0 leaves no context at all; use at least one "
        "focal level or keep the global context."
    )
  if model.depthwise_impl not in depthwise.available():
    raise ValueError(
        f"depthwise_impl={model.depthwise_impl!r} is not one of {depthwise.available()}."
    )
  ce = model.chunk_elements
  if not (ce == "auto" or (isinstance(ce, (int, np.integer)) and not isinstance(ce, bool) and ce >= 0)):
    raise ValueError(
        f"chunk_elements={ce!r} must be 'auto', 0 (whole batches) or a positive number of "
        "activation elements per chunk."
    )
