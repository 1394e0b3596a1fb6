"""The exact GELU every FocalNet layer and kernel applies, and its derivative (a leaf: the model and
the kernels share it)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


@jax.custom_jvp
def gelu(x: jax.Array) -> jax.Array:
  """Exact GELU, x * Phi(x), written as PyTorch's CPU kernel writes it: 0.5 x (1 + erf(x / sqrt 2)).

  Flax's `nn.gelu(approximate=False)` goes through erfc, which XLA:CPU lowers to an
  exp-based expansion about 2.7x slower than its erf polynomial; the two agree to float32
  rounding (and this form is PyTorch's). Flax's default is the tanh approximation.
  Its derivative is `gelu_grad`, not autodiff through erf: see there.
  """
  return x * (0.5 * (1.0 + lax.erf(x * np.asarray(1.0 / np.sqrt(2.0), x.dtype))))


def gelu_grad(x: jax.Array) -> jax.Array:
  """GELU'(x) = Phi(x) + x phi(x), op by op in x's dtype.

  Written out, so that GELU's gradient is the same under every jax: from 0.12 on, autodiff of
  erf computes exp(-t^2) through a split-precision custom_jvp whose `polynomial` primitive
  fails under shard_map ("requires varying manual axes to match"), and the Mosaic GPU backward
  kernel (which cannot lower autodiff's ops) computes the same function.
  """
  const = lambda v: np.asarray(v, x.dtype)  # noqa: E731 (rounded to x's dtype, as gelu rounds its own)
  t = x * const(1.0 / np.sqrt(2.0))
  return const(0.5) * (const(1.0) + lax.erf(t)) + x * const(1.0 / np.sqrt(2.0 * np.pi)) * jnp.exp(-(t * t))


@gelu.defjvp
def _gelu_jvp(primals, tangents):
  (x,), (dx,) = primals, tangents
  return gelu(x), dx * gelu_grad(x)
