"""The exact GELU every FocalNet layer and kernel applies (a leaf: the model and the kernels share it)."""
from __future__ import annotations

import jax
import numpy as np
from jax import lax


def gelu(x: jax.Array) -> jax.Array:
  """Exact GELU, x * Phi(x), written as PyTorch's CPU kernel writes it: 0.5 x (1 + erf(x / sqrt 2)).

  Flax's `nn.gelu(approximate=False)` goes through erfc, which XLA:CPU lowers to an
  exp-based expansion about 2.7x slower than its erf polynomial; the two agree to float32
  rounding (and this form is PyTorch's). Flax's default is the tanh approximation.
  """
  return x * (0.5 * (1.0 + lax.erf(x * np.asarray(1.0 / np.sqrt(2.0), x.dtype))))
