"""Focal modulation (Yang et al., NeurIPS 2022, Sec. 3.2): the token mixer of every FocalNet block.

Equations and symbols as in docs/model.md, "Focal modulation".
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from focalnet_jax.kernels import aligned_projection
from focalnet_jax.model import focal_context
from focalnet_jax.model.execution import Execution
from focalnet_jax.model.layers import conv_bias_init, conv_init, dense_init, layer_norm

Dtype = Any


class FocalModulation(nn.Module):
  """y = q(x) * h(sum_l G^l * Z^l), then a projection.

  `focal_level` (L) depthwise convs of growing kernel (focal_window + focal_factor * l) are
  stacked, so level l sees a (sum of kernels)-wide neighbourhood; the global context Z^{L+1}
  is the GELU of the spatial mean of the last level. The ablation switches of the paper:
  `use_global_context=False` drops the global term, `use_gating=False` sums the levels
  unweighted (and `f` emits no gate channels), `interaction='add'` uses q + M.

  `execution` (model/execution.py) says how it runs, never what it computes: the depthwise conv
  and the focal context implementations ('reference', 'fused' or 'mosaic': model/focal_context.py),
  and `f_align` > 1 has `f`'s matmul write each of q, f_z and the gates at a multiple of that many
  channels (same parameters, same values; `kernels/aligned_projection.py`); 1 is the plain nn.Dense.
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
  execution: Execution = Execution()
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  norm_dtype: Dtype | None = None  # what the optional post-LN writes (None: float32)

  def __post_init__(self):
    # Resolved here, not per call: the module then names what it runs (a no-op on a resolved value).
    object.__setattr__(self, "execution", self.execution.resolve())
    super().__post_init__()

  def num_gates(self) -> int:
    """Gate channels emitted by `f`: one per level plus one for the global context."""
    return (self.focal_level + int(self.use_global_context)) if self.use_gating else 0

  def kernel_sizes(self) -> tuple[int, ...]:
    """Depthwise kernel size of each level: focal_window + focal_factor * l for `focal_layers_l`, l = 0..L-1."""
    return tuple(self.focal_factor * l + self.focal_window for l in range(self.focal_level))

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    c = x.shape[-1]
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
    # One linear layer `f` fuses q, f_z and the gate projection: its output width is 2C + L + 1.
    # q = q(x);  Z^0 = f_z(x);  G = the gate projection of x (raw, no sigmoid or softmax).
    if self.execution.f_align == 1:
      x = dense(2 * c + self.num_gates(), kernel_init=dense_init, name="f")(x)
      q, z, gates = jnp.split(x, [c, 2 * c], axis=-1)
    else:  # the same `f`, its matmul writing each of q, Z^0, G at a multiple of f_align channels
      q, z, gates = aligned_projection.AlignedSplitDense(
          (c, c, self.num_gates()), self.execution.f_align, kernel_init=dense_init, dtype=self.dtype,
          param_dtype=self.param_dtype, name="f")(x)

    # Z^l = GELU(DWConv_l(Z^{l-1})) for l = 1..L, k_l x k_l depthwise convs; the global context
    # Z^{L+1} = GELU(GlobalAvgPool(Z^L)), the mean in float32; Z^out = sum_l G^l * Z^l (divided by
    # the number of terms with `normalize_modulator`). One call: see model/focal_context.py.
    kernels = [
        self.param(f"focal_layers_{level}", conv_init, (k, k, 1, c), self.param_dtype).astype(self.dtype)
        for level, k in enumerate(self.kernel_sizes())
    ]
    z_out = focal_context.focal_context(
        z, kernels, gates if self.use_gating else None, use_global_context=self.use_global_context,
        normalize_modulator=self.normalize_modulator, depthwise_impl=self.execution.depthwise,
        impl=self.execution.focal_context)

    # M = h(Z^out), a 1x1 conv (PyTorch's conv init).
    modulator = dense(c, kernel_init=conv_init, bias_init=conv_bias_init(c), name="h")(z_out)
    # Exposed for visualisation (`mutable=['intermediates']`); no effect on the output.
    self.sow("intermediates", "modulator", modulator)
    if self.use_gating:
      self.sow("intermediates", "gates", gates)
    # y = q(x) * M (or q(x) + M in the interaction ablation), then the output projection.
    out = q * modulator if self.interaction == "multiply" else q + modulator
    if self.use_postln_in_modulation:
      out = layer_norm("ln", self.param_dtype, self.norm_dtype)(out)
    out = dense(c, kernel_init=dense_init, name="proj")(out)
    return nn.Dropout(self.drop_rate)(out, deterministic=not train)
