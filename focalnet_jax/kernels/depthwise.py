"""The depthwise convolution behind FocalNet's hierarchical contextualization.

Every focal level is a k x k depthwise convolution (one filter per channel, stride 1,
'same' padding of k // 2, no bias). It is the one op whose speed differs most between
backends, so it lives behind `depthwise_conv`, and each implementation is registered by
name. 'xla' (a grouped `lax.conv_general_dilated`) is the reference every other
implementation is tested against: 'shift' (pure JAX, k*k shifted multiply-adds with a custom
gradient) and 'native' (compiled C++ custom calls for XLA:CPU, built on first use).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from focalnet_jax.kernels import native
from focalnet_jax.kernels.registry import Registry

# (x: (B, H, W, C), kernel: (k, k, 1, C)) -> (B, H, W, C)
DepthwiseFn = Callable[[jax.Array, jax.Array], jax.Array]

_IMPLEMENTATIONS: Registry[DepthwiseFn] = Registry("execution.depthwise")
register = _IMPLEMENTATIONS.register


def available() -> tuple[str, ...]:
  """Names accepted by `depthwise_conv(..., impl=...)`, plus 'auto'."""
  return ("auto",) + _IMPLEMENTATIONS.names()


@register("xla")
def depthwise_conv_xla(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """Reference: XLA's grouped convolution with feature_group_count = C."""
  k = kernel.shape[0]
  return lax.conv_general_dilated(
      x,
      kernel,
      window_strides=(1, 1),
      padding=((k // 2, k // 2), (k // 2, k // 2)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=x.shape[-1],
  )


def _shifted_sum(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """sum_{i,j} pad(x)[:, h+i, w+j, :] * kernel[i, j]: the forward pass as k*k multiply-adds."""
  k, _, _, c = kernel.shape
  h, w = x.shape[1], x.shape[2]
  p = k // 2
  xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  w2 = kernel.reshape(k, k, c)
  out = None
  for i in range(k):
    for j in range(k):
      term = lax.slice(xp, (0, i, j, 0), (xp.shape[0], i + h, j + w, c)) * w2[i, j]
      out = term if out is None else out + term
  return out


@jax.custom_vjp
def _depthwise_conv_shift(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """The same convolution as k*k shifted multiply-adds over a padded input.

  XLA:CPU lowers grouped convolutions to a slow generic loop; k*k elementwise
  multiply-adds over shifted views fuse into one loop nest and run several times faster.
  The custom gradient keeps only `x` for the backward pass (autodiff would keep k*k
  shifted copies): the input gradient is the same convolution of the cotangent with the
  kernel flipped in both spatial axes, and each kernel tap's gradient is one fused
  multiply-reduce, computed in a loop over taps.
  """
  return _shifted_sum(x, kernel)


def _shift_fwd(x, kernel):
  return _shifted_sum(x, kernel), (x, kernel)


def _shift_bwd(residuals, g):
  x, kernel = residuals
  k, _, _, c = kernel.shape
  b, h, w = x.shape[:3]
  p = k // 2
  dx = _shifted_sum(g, kernel[::-1, ::-1])
  xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  acc = jnp.promote_types(g.dtype, jnp.float32)  # accumulate low-precision sums in float32
  g_acc = g.astype(acc)

  def tap(_, t):
    # One kernel tap per iteration: unrolled, XLA:CPU materialises all k*k shifted copies of
    # the input (k*k times the activation memory); in a loop only one is live.
    window = lax.dynamic_slice(xp, (0, t // k, t % k, 0), (b, h, w, c))
    return None, jnp.sum(window.astype(acc) * g_acc, axis=(0, 1, 2))

  _, taps = lax.scan(tap, None, jnp.arange(k * k))
  return dx, taps.reshape(kernel.shape).astype(kernel.dtype)


_depthwise_conv_shift.defvjp(_shift_fwd, _shift_bwd)


def _varying_axes(a: jax.Array) -> frozenset:
  """The manual mesh axes `a` varies over inside `shard_map` (empty outside it)."""
  aval = jax.typeof(a)
  manual = getattr(aval, "manual_axis_type", None)  # jax >= 0.10
  return frozenset(manual.varying if manual is not None else getattr(aval, "vma", ()))


def varying_like(a: jax.Array, *refs: jax.Array) -> jax.Array:
  """`a`, marked as varying over every manual mesh axis that any of `refs` varies over.

  Inside `shard_map` a replicated kernel applied to a per-device batch must enter a
  custom-VJP function with the batch's varying axes: its cotangent is per-device, and
  autodiff then sums it over those axes (the transpose of the cast), as it does for
  built-in ops. Outside `shard_map` both sets are empty and this is the identity.
  """
  missing = tuple(sorted(frozenset().union(*map(_varying_axes, refs)) - _varying_axes(a)))
  return lax.pcast(a, missing, to="varying") if missing else a


@register("shift")
def depthwise_conv_shift(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """The depthwise convolution as k*k shifted multiply-adds, with a custom gradient."""
  return _depthwise_conv_shift(varying_like(x, kernel), varying_like(kernel, x))


@jax.custom_vjp
def _depthwise_conv_native(x: jax.Array, kernel: jax.Array) -> jax.Array:
  k = kernel.shape[0]
  out = jax.ffi.ffi_call(
      "focalnet_depthwise_conv_fwd", jax.ShapeDtypeStruct(x.shape, x.dtype), vmap_method="sequential"
  )(x, kernel.reshape(k, k, -1))
  return varying_like(out, x)  # custom-call results carry no shard_map axes of their own


def _native_fwd(x, kernel):
  return _depthwise_conv_native(x, kernel), (x, kernel)


def _native_bwd(residuals, g):
  x, kernel = residuals
  k = kernel.shape[0]
  dx, dk = jax.ffi.ffi_call(
      "focalnet_depthwise_conv_bwd",
      (jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct((k, k, x.shape[-1]), x.dtype)),
      vmap_method="sequential",
  )(x, kernel.reshape(k, k, -1)[::-1, ::-1], g)
  dx, dk = (varying_like(a, x, g) for a in (dx, dk))
  return dx, dk.reshape(kernel.shape)


_depthwise_conv_native.defvjp(_native_fwd, _native_bwd)


@register("native")
def depthwise_conv_native(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """Compiled C++ kernels for XLA:CPU (`focalnet_jax/kernels/csrc`), float32, with their own backward.

  The forward keeps each position's k*k taps in registers; the backward computes the input and
  kernel gradients in one sweep over rows, split over XLA's intra-op threads. Other dtypes,
  other backends, or a machine where the kernels cannot be built (see `focalnet_jax.kernels.native`)
  get the pure-JAX implementation 'auto' would otherwise pick.
  """
  if x.dtype != jnp.float32 or jax.default_backend() != "cpu" or not native.available():
    return _IMPLEMENTATIONS[_pure_jax_default()](x, kernel)
  return _depthwise_conv_native(varying_like(x, kernel), varying_like(kernel, x))


def _pure_jax_default() -> str:
  return "shift" if jax.default_backend() == "cpu" else "xla"


def default_impl() -> str:
  """The implementation 'auto' resolves to on the current default backend.

  CPU: 'native' when its kernels build on this machine (float32; other dtypes run 'shift'),
  else 'shift'. Other backends: 'xla'.
  """
  if jax.default_backend() == "cpu" and native.available():
    return "native"
  return _pure_jax_default()


def resolve(impl: str) -> str:
  """The concrete implementation name for `impl`: 'auto' becomes `default_impl()`.

  Models call this once, when they are built, so that a model names the implementation it
  runs (and a checkpoint can record it); resolving probes the backend and may build the
  native kernels.
  """
  if impl == "auto":
    return default_impl()
  return _IMPLEMENTATIONS.check(impl, available())


def depthwise_conv(x: jax.Array, kernel: jax.Array, impl: str = "auto") -> jax.Array:
  """k x k depthwise convolution, stride 1, zero padding k // 2, no bias.

  Args:
    x: (B, H, W, C) input.
    kernel: (k, k, 1, C) filters, k odd.
    impl: a name from `available()`; 'auto' picks the fastest known one for the backend.
  """
  return _IMPLEMENTATIONS[resolve(impl)](x, kernel.astype(x.dtype))
