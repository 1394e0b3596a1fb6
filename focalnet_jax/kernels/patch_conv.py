"""The strided convolution of the patch embedding and the downsamplings, as a matmul where it can be."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def patch_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
  """Strided convolution (B, H, W, Cin) x (k, k, Cin, F) -> (B, H', W', F), no bias.

  When kernel == stride and there is no padding (FocalNet's patch embedding and
  downsamplings) the windows tile the image, so the convolution is exactly one matmul over
  patches: a reshape puts each k x k x Cin patch in a row. XLA:CPU runs that matmul at
  full speed, while its convolution kernel-gradient for strided convs inside a loop is
  two orders of magnitude slower. Overlapping windows (conv embedding) use the conv.
  """
  k, _, cin, _ = kernel.shape
  if k != stride or padding:
    return lax.conv_general_dilated(
        x, kernel, window_strides=(stride, stride), padding=((padding, padding), (padding, padding)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
  b, h, w, _ = x.shape
  # One axis split per reshape: JAX's explicit-sharding rules accept that for a sharded batch.
  patches = x.reshape(b, h // k, k, w, cin).reshape(b, h // k, k, w // k, k, cin)
  patches = patches.transpose(0, 1, 3, 2, 4, 5)
  return jnp.einsum("bhwijc,ijcf->bhwf", patches, kernel)
