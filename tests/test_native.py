"""The compiled CPU kernels: they build where a compiler exists, match the reference, and fall
back to pure JAX (with a warning) when they cannot be built or loaded."""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focalnet_jax.kernels import depthwise, native


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
