"""The focal context Z^out (model/focal_context.py): every implementation gives the reference's
values and gradients (w.r.t. Z^0, the kernels and the gates) for every switch of the paper's
ablations, under jit, vmap, a sharded batch and shard_map; the fused path stores less for the
backward pass; a whole FocalNet gives the same logits and gradients on either path.

The reference itself is checked against an independent numpy FocalModulation in test_model.py.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from focalnet_jax.model import focal_context as fc
from focalnet_jax.kernels import mosaic
from focalnet_jax.model import Execution, FocalNet

from test_model import images, random_variables, tiny_model, tree_allclose

SHAPE = (2, 9, 7, 4)  # odd, unequal sides: padding and the mean see every edge
# Each is checked against the reference; 'mosaic' where jax has its Mosaic GPU interpreter (>= 0.11).
IMPLS = [pytest.param(i, marks=pytest.mark.skipif(
    i == "mosaic" and not mosaic.available(), reason="needs jax >= 0.11 (Mosaic GPU interpreter)"))
         for i in fc.available() if i != "reference"]


def arrays(level: int, gating: bool, global_context: bool, dtype=jnp.float32, shape=SHAPE, seed=0):
  """(z0, kernels, gates, cotangent) at O(1) scale, kernel sizes 3, 5, 7, ... as in the model."""
  rng = np.random.default_rng(seed)
  c = shape[-1]
  z0 = rng.normal(size=shape)
  kernels = tuple(rng.normal(size=(k, k, 1, c)) / k for k in (3 + 2 * l for l in range(level)))
  gates = rng.normal(size=shape[:-1] + (level + int(global_context),)) if gating else None
  cot = rng.normal(size=shape)
  cast = lambda a: None if a is None else jnp.asarray(a, dtype)  # noqa: E731
  return cast(z0), tuple(map(cast, kernels)), cast(gates), cast(cot)


def context_fn(impl: str, global_context: bool, normalize: bool, depthwise_impl: str = "xla"):
  return lambda z0, kernels, gates: fc.focal_context(
      z0, kernels, gates, use_global_context=global_context, normalize_modulator=normalize,
      depthwise_impl=depthwise_impl, impl=impl)


def value_and_grads(impl: str, args, global_context: bool, normalize: bool, depthwise_impl: str = "xla"):
  """Z^out and the gradients of <Z^out, cot> w.r.t. (z0, kernels, gates), jitted."""
  z0, kernels, gates, cot = args
  f = context_fn(impl, global_context, normalize, depthwise_impl)

  def run(z0, kernels, gates, cot):
    out, vjp = jax.vjp(f, z0, kernels, gates)
    return out, vjp(cot)

  return jax.jit(run)(z0, kernels, gates, cot)


def assert_same(got, want, dtype=jnp.float32):
  tol = dict(rtol=1e-5, atol=1e-5) if dtype == jnp.float32 else dict(rtol=2e-2, atol=2e-2)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert g.dtype == w.dtype and g.shape == w.shape
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32), **tol)


def assert_as_accurate(got, want, exact):
  """Each leaf of `got` is no further from `exact` than `want` is (with a quarter of slack and
  half a bfloat16 ulp of the largest entry). For bfloat16 gradients: a kernel gradient sums
  B x H x W products, so its error follows the terms, not the result, and implementations that
  sum in another order (the Mosaic backward, in float32) differ from the reference's XLA conv by
  more than a fixed tolerance allows, while both are about as close to the exact gradient."""
  for g, w, e in zip(*(jax.tree.leaves(t) for t in (got, want, exact)), strict=True):
    assert g.dtype == w.dtype and g.shape == w.shape == e.shape
    g, w, e = (np.asarray(a, np.float32) for a in (g, w, e))
    bound = 1.25 * np.abs(w - e).max() + 2.0**-9 * max(1.0, np.abs(e).max())
    assert np.abs(g - e).max() <= bound, (np.abs(g - e).max(), np.abs(w - e).max())


# (L, gating, global context, normalize_modulator): every switch, L = 0..3.
CONFIGS = [
    (0, True, True, False), (1, True, True, False), (2, True, True, False), (3, True, True, True),
    (2, False, True, False), (2, True, False, False), (2, False, False, True), (3, False, True, True),
    (1, True, False, True), (0, False, True, True),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("level,gating,global_context,normalize", CONFIGS)
def test_values_and_gradients_equal_the_reference(impl, level, gating, global_context, normalize):
  args = arrays(level, gating, global_context)
  got = value_and_grads(impl, args, global_context, normalize)
  assert_same(got, value_and_grads("reference", args, global_context, normalize))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("depthwise_impl", ["shift", "native"])
def test_every_depthwise_implementation_inside(impl, depthwise_impl):
  # 'shift' and 'native' carry custom VJPs of their own, differentiated inside the fused backward.
  args = arrays(2, True, True)
  got = value_and_grads(impl, args, True, False, depthwise_impl)
  assert_same(got, value_and_grads("reference", args, True, False, depthwise_impl))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("gating,normalize", [(True, False), (False, True)])
def test_bfloat16_compute_keeps_dtypes_and_values(impl, gating, normalize):
  args = arrays(2, gating, True, dtype=jnp.bfloat16)
  got = value_and_grads(impl, args, True, normalize)
  want = value_and_grads("reference", args, True, normalize)
  exact = value_and_grads("reference", jax.tree.map(lambda a: a.astype(jnp.float32), args), True, normalize)
  assert got[0].dtype == jnp.bfloat16
  assert_same(got[0], want[0], jnp.bfloat16)  # the forward rounds as the reference does
  assert_as_accurate(got[1], want[1], exact[1])


@pytest.mark.parametrize("impl", IMPLS)
def test_vmap_of_per_example_gradients(impl):
  # vmap over a leading axis of (z0, gates, cot), the kernels shared: per-example gradients.
  z0, kernels, gates, cot = arrays(2, True, True)
  grads = {}
  for name in ("reference", impl):
    f = context_fn(name, True, False)
    per_example = jax.grad(lambda z, k, g, c: jnp.sum(f(z[None], k, g[None]) * c[None]), argnums=(0, 1, 2))
    grads[name] = jax.jit(jax.vmap(per_example, in_axes=(0, None, 0, 0)))(z0, kernels, gates, cot)
  assert grads[impl][1][0].shape == (SHAPE[0],) + kernels[0].shape
  assert_same(grads[impl], grads["reference"])


@pytest.mark.parametrize("impl", IMPLS)
def test_sharded_batch_over_eight_devices(impl):
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  args = arrays(2, True, True, shape=(8, 6, 5, 4))
  batch = NamedSharding(mesh, P("data"))
  z0, kernels, gates, cot = args
  sharded = (jax.device_put(z0, batch), kernels, jax.device_put(gates, batch), jax.device_put(cot, batch))
  out, grads = value_and_grads(impl, sharded, True, False)
  assert out.sharding.is_equivalent_to(batch, out.ndim)
  assert_same((out, grads), value_and_grads("reference", args, True, False))


def test_shard_map_sums_the_replicated_kernel_gradients():
  # Data parallelism written with shard_map: kernels replicated, the batch split over 4 devices.
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:4]), ("data",))
  z0, kernels, gates, cot = arrays(2, True, True, shape=(8, 6, 5, 4))

  def loss(impl):
    f = context_fn(impl, True, False, "shift")
    return lambda z, k, g, c: jnp.sum(f(z, k, g) * c)

  spec = (P("data"), P(), P("data"), P("data"))
  local = jax.shard_map(jax.grad(loss("fused"), argnums=(0, 1, 2)), mesh=mesh, in_specs=spec,
                        out_specs=(P("data"), P(), P("data")))
  got = jax.jit(local)(z0, kernels, gates, cot)
  assert_same(got, jax.grad(loss("reference"), argnums=(0, 1, 2))(z0, kernels, gates, cot))


def test_fused_backward_keeps_only_its_inputs():
  # What the backward pass holds on to: the reference keeps every level (and GELU's inputs and
  # intermediates), the fused path Z^0, the kernels and the gates only. (The residuals are the
  # array leaves of the VJP closure. On XLA:CPU the compiled temp memory is the same for both:
  # its pipeline expands optimisation barriers before CSE, which then merges the backward's
  # recomputation with the forward pass, as it does for jax.checkpoint; GPU and TPU keep them.)
  z0, kernels, gates, _ = arrays(3, True, True)

  def residual_bytes(impl):
    _, vjp = jax.vjp(context_fn(impl, True, False), z0, kernels, gates)
    return sum(a.nbytes for a in jax.tree.leaves(vjp) if isinstance(a, jax.Array))

  inputs = sum(a.nbytes for a in jax.tree.leaves((z0, kernels, gates)))
  assert residual_bytes("fused") == inputs
  assert residual_bytes("reference") > 3 * z0.nbytes + inputs


def test_unknown_implementation_is_refused_with_the_choices():
  z0, kernels, gates, _ = arrays(1, True, True)
  with pytest.raises(ValueError, match="'fused'"):
    context_fn("fast", True, False)(z0, kernels, gates)
  with pytest.raises(ValueError, match="execution.focal_context='fast' must be one of"):
    tiny_model(execution=Execution(focal_context="fast"))


def test_default_is_the_reference():
  assert FocalNet().execution.focal_context == "reference"
  assert tiny_model().execution.focal_context == "reference"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("overrides", [dict(), dict(normalize_modulator=True, use_gating=False, focal_levels=(1, 2, 0, 3))])
def test_whole_network_equals_the_reference_path_in_logits_and_gradients(impl, overrides):
  reference = tiny_model(execution=Execution(depthwise="xla"), **overrides)
  fused = reference.with_execution(focal_context=impl)
  variables = random_variables(reference)
  x = images(0, size=32)
  onehot = jax.nn.one_hot(jnp.arange(2), 10)

  def loss(model):
    return lambda p: jnp.sum(jax.nn.log_softmax(model.apply({"params": p}, x)) * onehot)

  want = jax.jit(jax.value_and_grad(loss(reference)))(variables["params"])
  got = jax.jit(jax.value_and_grad(loss(fused)))(variables["params"])
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
  tree_allclose(got[1], want[1], rtol=1e-4, atol=1e-5)
  tree_allclose(fused.apply(variables, x), reference.apply(variables, x), rtol=1e-5, atol=1e-5)
