"""The building blocks under focal modulation: initialisers, GELU, LayerNorm, stochastic depth,
the MLP, and the strided patch convolution with its LayerNorm (stem and downsamplings).

Initialisers and numerics follow the official PyTorch code, so converted weights reproduce its
logits (docs/model.md, "Numerics and initialisation").
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from focalnet_jax.kernels.activations import gelu  # noqa: F401 (the model's GELU, shared with the kernels)
from focalnet_jax.kernels.patch_conv import patch_conv

Dtype = Any

# Dense layers: truncated normal, std 0.02, zero bias (the official code's).
dense_init = nn.initializers.truncated_normal(stddev=0.02)
# Convolutions keep PyTorch's default: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
conv_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def conv_bias_init(fan_in: int) -> nn.initializers.Initializer:
  """PyTorch's default conv bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / np.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


# The dtypes a LayerNorm may write (a model's `norm_dtype`; None writes float32). float16 is left
# out: a float16 residual stream would need loss scaling, which the trainer does not do.
NORM_DTYPES = ("float32", "bfloat16")


def resolve_norm_dtype(value: Any) -> jnp.dtype | None:
  """`norm_dtype` as a dtype (None stays None); a ValueError naming the choices otherwise."""
  if value is None:
    return None
  try:
    dtype = jnp.dtype(value)
  except (TypeError, ValueError):
    dtype = None
  if dtype is None or dtype.name not in NORM_DTYPES:
    raise ValueError(f"norm_dtype={value!r} must be None (LayerNorms write float32) or one of "
                     f"{', '.join(map(repr, NORM_DTYPES))}.")
  return dtype


def layer_norm(name: str, param_dtype: Dtype, dtype: Dtype | None = None) -> nn.LayerNorm:
  """LayerNorm with PyTorch's eps, computed in float32 and written in `dtype` (None: float32).

  Mean and variance are float32 reductions whatever the input's dtype
  (`force_float32_reductions`), and so are the normalisation and the affine map; only the
  result is rounded to `dtype`. Writing float32 is PyTorch AMP's choice and the default.
  """
  dtype = resolve_norm_dtype(dtype)
  return nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32 if dtype is None else dtype, param_dtype=param_dtype,
                      force_float32_reductions=True, name=name)


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
  """Dense(C -> hidden), exact GELU, dropout, Dense(hidden -> C), dropout."""

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


class PatchConv(nn.Module):
  """A k x k stride-s convolution with bias, `nn.Conv`'s parameters and PyTorch's init.

  Non-overlapping windows (k == s, no padding) run as one matmul over patches
  (`kernels.patch_conv`).
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
    y = patch_conv(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, self.padding)
    return y + bias.astype(self.dtype)


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
  norm_dtype: Dtype | None = None  # what the LayerNorm writes (None: float32)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = PatchConv(self.features, self.kernel_size, self.stride, self.padding, self.dtype,
                  self.param_dtype, name="proj")(x)
    return layer_norm("norm", self.param_dtype, self.norm_dtype)(x)
