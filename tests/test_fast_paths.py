"""The speed paths give the reference's results: patch matmuls, erf GELU, chunked stages, micro-batches.

Each fast path is checked against the plain formulation on random inputs, in values and in
gradients, since training goes through both.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from focalnet_jax.kernels import chunking
from focalnet_jax.kernels.chunking import CACHE_CHUNK_ELEMENTS, auto_chunk_size
from focalnet_jax.kernels.patch_conv import patch_conv
from focalnet_jax.model import Execution, gelu

from test_model import images, random_variables, tiny_model, tree_allclose


def _conv_reference(x, kernel, stride, padding):
  return lax.conv_general_dilated(
      x, kernel, (stride, stride), ((padding, padding), (padding, padding)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=lax.Precision.HIGHEST,
  )


@pytest.mark.parametrize("k,stride,padding,size", [(4, 4, 0, 16), (2, 2, 0, 12), (3, 2, 1, 12), (7, 4, 2, 16)])
def test_patch_conv_equals_the_convolution_in_values_and_gradients(k, stride, padding, size):
  rng = np.random.default_rng(k)
  x = jnp.asarray(rng.normal(size=(2, size, size, 5)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(k, k, 5, 7)) / k, jnp.float32)
  np.testing.assert_allclose(patch_conv(x, kernel, stride, padding),
                             _conv_reference(x, kernel, stride, padding), rtol=1e-5, atol=1e-5)
  cot = jnp.asarray(rng.normal(size=_conv_reference(x, kernel, stride, padding).shape), jnp.float32)
  grad = lambda f: jax.grad(lambda x, w: jnp.sum(f(x, w, stride, padding) * cot), argnums=(0, 1))(x, kernel)
  tree_allclose(grad(patch_conv), grad(_conv_reference), rtol=1e-4, atol=1e-4)


def test_gelu_is_pytorchs_exact_gelu_and_has_its_gradient():
  torch = pytest.importorskip("torch")
  x = np.concatenate([np.linspace(-12, 12, 2001), np.random.default_rng(0).normal(size=4000) * 3]).astype(np.float32)
  ours = np.asarray(jax.jit(gelu)(jnp.asarray(x)))
  theirs = torch.nn.functional.gelu(torch.from_numpy(x)).numpy()
  np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=2e-6)
  # Its derivative is Phi(x) + x phi(x), the exact GELU's (erfc-based in jax.nn).
  exact = jax.vmap(jax.grad(lambda v: jax.nn.gelu(v, approximate=False)))(jnp.asarray(x))
  np.testing.assert_allclose(jax.vmap(jax.grad(gelu))(jnp.asarray(x)), exact, rtol=1e-5, atol=1e-6)


def test_auto_chunk_size_picks_the_largest_divisor_within_budget():
  assert auto_chunk_size(8, 56 * 56 * 96, CACHE_CHUNK_ELEMENTS) == 1  # FocalNet-T stage 1
  assert auto_chunk_size(8, 28 * 28 * 192, CACHE_CHUNK_ELEMENTS) == 2
  assert auto_chunk_size(8, 7 * 7 * 768, CACHE_CHUNK_ELEMENTS) == 8
  assert auto_chunk_size(12, 10, 55) == 4  # 5 does not divide 12
  assert auto_chunk_size(7, 10, 55) == 1  # prime batch
  assert auto_chunk_size(8, 10**9, 10) == 1  # over budget: one example at a time
  # Over 4 devices, chunks stay multiples of 4 so a sharded batch splits evenly.
  assert auto_chunk_size(16, 10, 55, num_devices=4) == 4
  assert auto_chunk_size(16, 10**9, 10, num_devices=4) == 4
  assert auto_chunk_size(6, 10, 20, num_devices=4) == 6  # no even split: the whole batch


def test_auto_chunking_is_for_inference_on_cpu_only():
  model = tiny_model()
  assert jax.default_backend() == "cpu"
  assert chunking.resolve_chunk_elements("auto", train=False) == CACHE_CHUNK_ELEMENTS
  assert chunking.resolve_chunk_elements("auto", train=True) == 0
  # 56 x 56 x 16 elements per example at stage 1: 8 of them fit in CACHE_CHUNK_ELEMENTS.
  assert chunking.stage_chunk_sizes(model, 32, 224, 224)[0] == 8
  assert chunking.stage_chunk_sizes(model, 8, 224, 224, train=True) == (None,) * 4
  assert chunking.stage_chunk_sizes(model, 8, 224, 224, chunk_elements=0) == (None,) * 4


@pytest.mark.parametrize("bad", [-1, 1.5, "fast", True])
def test_chunk_elements_must_be_auto_zero_or_positive(bad):
  with pytest.raises(ValueError, match="chunk_elements"):
    chunking.resolve_chunk_elements(bad, train=False)


def test_chunking_is_an_execution_switch_checked_when_the_model_is_built():
  assert tiny_model(execution=Execution(chunk_elements=64)).execution.chunk_elements == 64
  with pytest.raises(ValueError, match=r"execution.chunk_elements=-1 must be 'auto', 0 or a positive int"):
    tiny_model(execution=Execution(chunk_elements=-1))


@pytest.mark.parametrize("batch", [16, 24])
def test_a_stage_over_chunks_equals_the_stage_on_the_whole_batch(batch):
  # One stage on an 8 x 8 x 16 token grid in chunks of 8 examples (a multiple of the 8 test
  # devices): 2 or 3 chunks.
  model = tiny_model(depths=(2,))
  assert chunking.stage_chunk_sizes(model, batch, 32, 32, chunk_elements=1) == (8,)
  x = images(3, size=32, batch=batch)
  variables = random_variables(model)
  whole = model.apply(variables, x, method=model.features)
  tree_allclose(chunking.features(model, variables, x, chunk_elements=1), whole, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 2, 3])
def test_chunk_m_holds_examples_m_m_plus_n_and_so_on(chunk_size):
  x = jnp.arange(6.0)[:, None]
  seen = []

  def record(xc, rngs):
    seen.append(xc.shape)
    return xc[:, 0] * 0 + jnp.sum(xc), xc  # (each example's chunk sum, the identity)

  sums, same = chunking._map_chunks(record, x, None, chunk_size)
  np.testing.assert_array_equal(same, x)  # merged back in order
  n = 6 // chunk_size
  expected = [sum(range(i % n, 6, n)) for i in range(6)]
  np.testing.assert_array_equal(sums, expected)
  with pytest.raises(ValueError, match="does not divide"):
    chunking._map_chunks(record, x, None, 4)


def test_no_chunking_is_exactly_the_plain_call():
  model = tiny_model()
  x = images(2, size=32, batch=3)
  variables = random_variables(model)
  np.testing.assert_array_equal(chunking.apply(model, variables, x, chunk_elements=0), model.apply(variables, x))


def test_chunked_stages_give_the_whole_batch_values_and_gradients():
  model = tiny_model()
  budget = 16 * 16 * 16 * 8
  x = images(0, size=64, batch=16)
  # Stage 1 runs in 2 chunks of 8 (a multiple of the 8 test devices), stage 2 whole.
  assert chunking.stage_chunk_sizes(model, 16, 64, 64, budget)[:2] == (8, 16)
  variables = random_variables(model)
  np.testing.assert_allclose(chunking.apply(model, variables, x, chunk_elements=budget), model.apply(variables, x),
                             rtol=1e-5, atol=1e-5)
  feats = chunking.features(model, variables, x, chunk_elements=budget)
  for a, b in zip(feats, model.apply(variables, x, method=model.features)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)

  def loss(chunk_elements):
    return lambda p: jnp.sum(chunking.apply(model, {"params": p}, x, train=True, chunk_elements=chunk_elements) ** 2)

  # jit: compiled once, the gradient runs faster than op by op.
  tree_allclose(jax.jit(jax.grad(loss(budget)))(variables["params"]), jax.jit(jax.grad(loss(0)))(variables["params"]),
                rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("axis_type", ["Auto", "Explicit"])
def test_chunked_stages_keep_a_sharded_batch_in_place(axis_type):
  model = tiny_model()
  mesh = jax.make_mesh((8,), ("data",), axis_types=(getattr(AxisType, axis_type),))
  x = jax.device_put(images(1, size=64, batch=16), NamedSharding(mesh, P("data")))
  variables = random_variables(model)
  out = jax.jit(lambda v, x: chunking.apply(model, v, x, chunk_elements=16 * 16 * 16 * 8))(variables, x)
  np.testing.assert_allclose(out, model.apply(variables, np.asarray(x)), rtol=1e-5, atol=1e-5)


def test_chunked_training_draws_dropout_per_chunk():
  model = tiny_model(drop_path_rate=0.5)
  x = images(4, size=32, batch=8)
  variables = random_variables(model)
  run = lambda key: chunking.apply(model, variables, x, train=True, rngs={"dropout": jax.random.key(key)},  # noqa: E731
                                   chunk_elements=1)
  a, b = run(0), run(1)
  assert a.shape == (8, 10) and np.all(np.isfinite(a))
  np.testing.assert_array_equal(a, run(0))  # the same key, the same masks
  assert not np.allclose(a, b)
