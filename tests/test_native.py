"""The depthwise-conv implementations agree with a numpy reference in values and gradients (also
under shard_map); the compiled CPU kernels build where a compiler exists, match the reference, and
fall back to pure JAX (with a warning) when they cannot be built or loaded."""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focalnet_jax.kernels import depthwise, native

from test_model import np_depthwise


def _random(shape, k, seed=0):
  kx, kk = jax.random.split(jax.random.key(seed))
  return jax.random.normal(kx, shape), jax.random.normal(kk, (k, k, 1, shape[-1]))


@pytest.fixture
def fresh_state(monkeypatch, tmp_path):
  """A process state in which the kernels have not been looked for, and an empty cache."""
  monkeypatch.setattr(native, "_state", {})
  monkeypatch.setenv("FOCALNET_JAX_CACHE_DIR", str(tmp_path))
  return tmp_path


@pytest.mark.skipif(native.compiler() is None, reason="no C++ compiler on this machine")
def test_kernels_build_here_and_auto_uses_them():
  assert native.available(), native.why_unavailable()
  assert depthwise.default_impl() == "native"
  assert depthwise.resolve("auto") == "native"


def test_no_compiler_falls_back_to_pure_jax_with_a_warning(fresh_state, monkeypatch):
  monkeypatch.setenv("CXX", str(fresh_state / "no-such-compiler"))
  x, w = _random((2, 6, 5, 8), 3)
  with pytest.warns(RuntimeWarning, match="compiled CPU kernels are unavailable.*no-such-compiler"):
    assert not native.available()
  assert "no-such-compiler" in native.why_unavailable()
  assert depthwise.default_impl() == "shift"
  assert depthwise.resolve("auto") == "shift"  # what a model built now runs
  np.testing.assert_allclose(depthwise.depthwise_conv(x, w, "native"), depthwise.depthwise_conv(x, w, "xla"),
                             rtol=1e-5, atol=1e-5)


def test_disabled_by_environment_without_a_warning(fresh_state, monkeypatch):
  monkeypatch.setenv("FOCALNET_JAX_NATIVE", "0")
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert not native.available()
  assert depthwise.default_impl() == "shift"
  assert not list(fresh_state.iterdir())  # nothing was built


@pytest.mark.skipif(native.compiler() is None, reason="no C++ compiler on this machine")
def test_damaged_cached_library_is_rebuilt(fresh_state):
  path = fresh_state / f"focalnet_native_{native._build_key(native.compiler())}.so"
  path.write_bytes(b"not a shared library")  # e.g. a build killed half-way by an old version
  assert native.available(), native.why_unavailable()
  assert path.stat().st_size > 1000
  x, w = _random((1, 7, 7, 16), 5)
  np.testing.assert_allclose(jax.jit(depthwise.depthwise_conv_native)(x, w), depthwise.depthwise_conv(x, w, "xla"),
                             rtol=1e-5, atol=1e-5)


def test_native_under_vmap_and_in_bfloat16_matches_the_reference():
  x, w = _random((3, 2, 6, 5, 16), 3)
  ref = jax.vmap(lambda a: depthwise.depthwise_conv(a, w, "xla"))(x)
  np.testing.assert_allclose(jax.vmap(lambda a: depthwise.depthwise_conv(a, w, "native"))(x), ref,
                             rtol=1e-5, atol=1e-5)
  # bfloat16 is not compiled: it runs the pure-JAX path and stays close to float32.
  out = depthwise.depthwise_conv(x[0].astype(jnp.bfloat16), w, "native")
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32), ref[0], rtol=0.05, atol=0.1)


@pytest.mark.skipif(native.compiler() is None, reason="no C++ compiler on this machine")
def test_kernel_rejects_a_malformed_call_with_a_clear_error():
  assert native.available()
  x = jnp.ones((1, 4, 4, 8))
  bad_kernel = jnp.ones((2, 2, 8))  # even window: not a FocalNet focal level
  call = jax.ffi.ffi_call("focalnet_depthwise_conv_fwd", jax.ShapeDtypeStruct(x.shape, x.dtype))
  with pytest.raises(Exception, match="K odd"):
    jax.block_until_ready(call(x, bad_kernel))


def test_resolve_keeps_concrete_names_and_rejects_unknown_ones():
  for name in ("xla", "shift", "native"):
    assert depthwise.resolve(name) == name
  with pytest.raises(ValueError, match="'fft' is not one of"):
    depthwise.resolve("fft")


# --- depthwise implementations ----------------------------------------------------------


@pytest.mark.parametrize("k,shape", [
    (1, (2, 5, 7, 3)), (3, (1, 9, 4, 6)), (5, (2, 7, 7, 5)), (7, (1, 5, 11, 4)), (9, (1, 3, 6, 2)),
    (3, (2, 6, 5, 97)),  # channel blocks of 64, 16 and a remainder of 1 in the native kernel
    (5, (3, 4, 9, 32)),  # a window larger than the image height
])
def test_depthwise_implementations_agree_in_values_and_gradients(k, shape):
  kx, kk, kg = jax.random.split(jax.random.key(k), 3)
  x = jax.random.normal(kx, shape)
  kernel = jax.random.normal(kk, (k, k, 1, shape[-1]))
  cot = jax.random.normal(kg, shape)
  expected = np_depthwise(np.asarray(x, np.float64), np.asarray(kernel, np.float64))

  def loss(impl):
    return lambda x, w: jnp.sum(depthwise.depthwise_conv(x, w, impl) * cot)

  for impl in ("xla", "shift", "native"):
    np.testing.assert_allclose(depthwise.depthwise_conv(x, kernel, impl), expected, rtol=1e-5, atol=1e-5)
  gx, gw = jax.grad(loss("xla"), argnums=(0, 1))(x, kernel)
  for impl in ("shift", "native"):
    sx, sw = jax.jit(jax.grad(loss(impl), argnums=(0, 1)))(x, kernel)
    np.testing.assert_allclose(sx, gx, rtol=1e-5, atol=1e-5, err_msg=impl)
    np.testing.assert_allclose(sw, gw, rtol=1e-5, atol=1e-4, err_msg=impl)


@pytest.mark.parametrize("impl", ["xla", "shift", "native"])
def test_depthwise_gradients_under_shard_map_match_the_global_ones(impl):
  # Data parallelism written with shard_map: a replicated kernel, a batch split over 4
  # devices. The gradient of the replicated kernel is summed over devices by autodiff (the
  # custom VJP must declare its cotangents with the batch's varying mesh axes for that),
  # so it equals the single-device gradient of the whole batch.
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:4]), ("data",))
  P = jax.sharding.PartitionSpec
  kx, kk, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (8, 6, 5, 3))
  kernel = jax.random.normal(kk, (3, 3, 1, 3))
  cot = jax.random.normal(kg, x.shape)

  def local_loss(x, w, cot):
    return jnp.sum(depthwise.depthwise_conv(x, w, impl) * cot)

  gx, gw = jax.jit(jax.shard_map(
      jax.grad(local_loss, argnums=(0, 1)), mesh=mesh, in_specs=(P("data"), P(), P("data")), out_specs=(P("data"), P())
  ))(x, kernel, cot)
  ex, ew = jax.grad(local_loss, argnums=(0, 1))(x, kernel, cot)
  np.testing.assert_allclose(gx, ex, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(gw, ew, rtol=1e-5, atol=1e-4)
