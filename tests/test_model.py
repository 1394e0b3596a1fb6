"""Focal modulation and the block, on tiny inputs; the helpers the other model tests share.

The focal modulation is checked against an independent numpy implementation of the
equations in docs/model.md, "Focal modulation" (explicit padding and loops), for every combination
of the ablation switches and both pure-JAX depthwise-conv implementations. The whole network is
tested in test_network.py, the depthwise implementations in test_native.py.
"""
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from focalnet_jax.model import DropPath, Execution, FocalModulation, FocalNet, FocalNetBlock
from focalnet_jax.model.layers import layer_norm, resolve_norm_dtype
from focalnet_jax.model.variants import create_model

TINY = dict(embed_dim=16, depths=(1, 1, 2, 1), num_classes=10, drop_path_rate=0.0)


def tiny_model(**overrides) -> FocalNet:
  return create_model("focalnet_tiny_srf", **{**TINY, **overrides})


def images(key: int, size: int = 64, batch: int = 2) -> jax.Array:
  return jax.random.normal(jax.random.key(key), (batch, size, size, 3), jnp.float32)


def tree_allclose(a, b, **tol) -> None:
  jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, **tol), a, b)


def abstract_variables(model: FocalNet, size: int = 32):
  return jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))


def random_variables(module, seed: int = 0, input_shape=None):
  """O(1)-scale random weights (fan-in scaled kernels, LayerNorm scales near 1).

  Drawn with numpy from the abstract parameter tree: compiling `init` would cost more than
  these tests' forward passes, and O(1) gates exercise the numerics harder than the init's.
  """
  rng = np.random.default_rng(seed)
  if input_shape is None:
    variables = abstract_variables(module)
  else:
    x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
    variables = jax.eval_shape(module.init, jax.random.key(0), x)

  def make(path, leaf):
    name = jax.tree_util.keystr(path)
    if name.endswith("['scale']"):
      value = 1.0 + 0.1 * rng.normal(size=leaf.shape)
    elif len(leaf.shape) == 1:  # biases and layerscale gammas
      value = 0.1 * rng.normal(size=leaf.shape)
    else:
      value = rng.normal(size=leaf.shape) / np.sqrt(math.prod(leaf.shape[:-1]))
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(make, variables)


# --- an independent numpy FocalModulation ------------------------------------------------


def np_gelu(x):
  return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def np_depthwise(x, kernel):
  """'same' k x k depthwise conv, zero padding k // 2, with explicit loops."""
  b, h, w, c = x.shape
  k = kernel.shape[0]
  p = k // 2
  padded = np.zeros((b, h + 2 * p, w + 2 * p, c))
  padded[:, p : p + h, p : p + w] = x
  out = np.zeros((b, h, w, c))
  for i in range(h):
    for j in range(w):
      for di in range(k):
        for dj in range(k):
          out[:, i, j] += padded[:, i + di, j + dj] * kernel[di, dj, 0]
  return out


def np_modulation(p, x, *, L, window, gating, global_ctx, interaction, normalize, postln, factor=2):
  """docs/model.md, "Focal modulation": Z^0 .. Z^L, Z^{L+1}, Z^out, M = h(Z^out), y = q * M, proj."""
  c = x.shape[-1]
  y = x @ p["f"]["kernel"] + p["f"]["bias"]
  q, ctx, gates = y[..., :c], y[..., c : 2 * c], y[..., 2 * c :]
  ctx_all = np.zeros_like(ctx)
  for l in range(L):
    ctx = np_gelu(np_depthwise(ctx, p[f"focal_layers_{l}"]))
    assert p[f"focal_layers_{l}"].shape[0] == window + factor * l
    ctx_all += ctx * gates[..., l : l + 1] if gating else ctx
  if global_ctx:
    ctx_global = np_gelu(ctx.mean(axis=(1, 2), keepdims=True))
    ctx_all += ctx_global * gates[..., L : L + 1] if gating else ctx_global
  if normalize:  # by the number of summed terms (L + 1 with the global context)
    ctx_all /= L + int(global_ctx)
  modulator = ctx_all @ p["h"]["kernel"] + p["h"]["bias"]
  out = q * modulator if interaction == "multiply" else q + modulator
  if postln:
    mu = out.mean(-1, keepdims=True)
    var = ((out - mu) ** 2).mean(-1, keepdims=True)
    out = (out - mu) / np.sqrt(var + 1e-5) * p["ln"]["scale"] + p["ln"]["bias"]
  return out @ p["proj"]["kernel"] + p["proj"]["bias"]


def random_modulation_params(rng, c, L, window, num_gates, postln, factor=2):
  """O(1) random values (the init's tiny gates would hide gating mistakes)."""
  n = lambda *s: rng.normal(0.0, 0.5, s)  # noqa: E731
  p = {
      "f": {"kernel": n(c, 2 * c + num_gates), "bias": n(2 * c + num_gates)},
      "h": {"kernel": n(c, c), "bias": n(c)},
      "proj": {"kernel": n(c, c), "bias": n(c)},
  }
  for l in range(L):
    k = window + factor * l
    p[f"focal_layers_{l}"] = n(k, k, 1, c)
  if postln:
    p["ln"] = {"scale": 1.0 + n(c), "bias": n(c)}
  return p


SWITCHES = list(itertools.product([True, False], [True, False], ["multiply", "add"], [False, True], [False, True]))


@pytest.mark.parametrize("impl", ["xla", "shift"])
@pytest.mark.parametrize("gating,global_ctx,interaction,normalize,postln", SWITCHES)
def test_modulation_matches_the_equations(impl, gating, global_ctx, interaction, normalize, postln):
  L, window, c = 2, 3, 6
  rng = np.random.default_rng(hash((gating, global_ctx, interaction, normalize, postln)) % 2**32)
  num_gates = (L + int(global_ctx)) if gating else 0
  p = random_modulation_params(rng, c, L, window, num_gates, postln)
  x = rng.normal(size=(2, 5, 7, c))
  module = FocalModulation(
      focal_level=L,
      focal_window=window,
      use_gating=gating,
      use_global_context=global_ctx,
      interaction=interaction,
      normalize_modulator=normalize,
      use_postln_in_modulation=postln,
      execution=Execution(depthwise=impl),
  )
  # Applying the hand-built tree also checks the parameter layout (Flax rejects wrong shapes).
  params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), p)
  out = module.apply({"params": params}, jnp.asarray(x, jnp.float32))
  expected = np_modulation(
      p, x, L=L, window=window, gating=gating, global_ctx=global_ctx,
      interaction=interaction, normalize=normalize, postln=postln,
  )
  scale = np.abs(expected).max()
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("impl", ["xla", "shift", "native"])
@pytest.mark.parametrize("L,window", [(0, 3), (1, 1), (3, 5)])
def test_modulation_levels_and_windows(impl, L, window):
  """focal_levels=0 keeps only the global context; wider windows and more levels work."""
  c = 4
  rng = np.random.default_rng(L * 10 + window)
  p = random_modulation_params(rng, c, L, window, L + 1, postln=False)
  x = rng.normal(size=(1, 9, 6, c))
  module = FocalModulation(focal_level=L, focal_window=window, execution=Execution(depthwise=impl))
  params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), p)
  out = module.apply({"params": params}, jnp.asarray(x, jnp.float32))
  expected = np_modulation(
      p, x, L=L, window=window, gating=True, global_ctx=True,
      interaction="multiply", normalize=False, postln=False,
  )
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_gating_switch_changes_the_projection_in():
  x = jnp.zeros((1, 8, 8, 16))
  shapes = lambda **kw: jax.eval_shape(  # noqa: E731
      FocalModulation(focal_level=3, focal_window=3, **kw).init, jax.random.key(0), x
  )["params"]
  assert shapes()["f"]["kernel"].shape == (16, 2 * 16 + 3 + 1)
  assert shapes(use_global_context=False)["f"]["kernel"].shape == (16, 2 * 16 + 3)
  assert shapes(use_gating=False)["f"]["kernel"].shape == (16, 2 * 16)
  assert [shapes()[f"focal_layers_{l}"].shape for l in range(3)] == [(3, 3, 1, 16), (5, 5, 1, 16), (7, 7, 1, 16)]


@pytest.mark.parametrize("global_ctx", [True, False])
def test_global_context_is_the_only_long_range_path(global_ctx):
  """Without the global term, a pixel beyond the receptive field cannot affect the output."""
  module = FocalModulation(focal_level=1, focal_window=3, use_global_context=global_ctx)
  x = jax.random.normal(jax.random.key(0), (1, 8, 8, 8))
  variables = random_variables(module, input_shape=x.shape)
  far = x.at[0, 7, 7].add(5.0)  # receptive field of one 3x3 level: radius 1
  delta = module.apply(variables, far)[0, 0, 0] - module.apply(variables, x)[0, 0, 0]
  if global_ctx:
    assert np.abs(delta).max() > 1e-3
  else:
    assert np.abs(delta).max() == 0.0


# --- stochastic depth --------------------------------------------------------------------


def test_drop_path_is_per_sample_and_rescaled():
  x = jnp.ones((64, 3, 3, 4))
  rate = 0.5
  drop = DropPath(rate)
  y = drop.apply({}, x, train=True, rngs={"dropout": jax.random.key(0)})
  per_sample = np.asarray(y).reshape(64, -1)
  # Every sample is either dropped entirely or kept entirely, scaled by 1 / keep.
  kept = np.all(per_sample == 1.0 / (1.0 - rate), axis=1)
  dropped = np.all(per_sample == 0.0, axis=1)
  assert np.all(kept | dropped)
  assert 16 < kept.sum() < 48  # Bernoulli(0.5) over 64 samples, both outcomes present
  np.testing.assert_allclose(y.mean(), 1.0, atol=0.3)
  # Off at eval; rate 0 is the identity even in training.
  assert np.array_equal(drop.apply({}, x, train=False), x)
  assert np.array_equal(DropPath(0.0).apply({}, x, train=True), x)


def test_block_drop_path_drops_residual_branches_per_sample():
  """Each sample's output is one of the four (modulation, mlp) keep/drop outcomes."""
  rate, keep = 0.5, 0.5
  block = FocalNetBlock(focal_level=2, focal_window=3, drop_path_rate=rate)
  x = jax.random.normal(jax.random.key(0), (32, 4, 4, 8))
  variables = random_variables(block, input_shape=x.shape)
  p = variables["params"]
  y = block.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})

  norm = lambda name, v: nn_layer_norm(p[name], v)  # noqa: E731
  modulation = lambda v: FocalModulation(focal_level=2, focal_window=3).apply(  # noqa: E731
      {"params": p["modulation"]}, v
  )

  def mlp(v):
    h = jax.nn.gelu(v @ p["mlp"]["fc1"]["kernel"] + p["mlp"]["fc1"]["bias"], approximate=False)
    return h @ p["mlp"]["fc2"]["kernel"] + p["mlp"]["fc2"]["bias"]

  after_mod = x + modulation(norm("norm1", x)) / keep
  outcomes = {
      "both dropped": x,
      "mlp kept": x + mlp(norm("norm2", x)) / keep,
      "modulation kept": after_mod,
      "both kept": after_mod + mlp(norm("norm2", after_mod)) / keep,
  }
  seen = set()
  for b in range(x.shape[0]):
    match = [k for k, o in outcomes.items() if np.allclose(y[b], o[b], rtol=1e-4, atol=1e-5)]
    assert match, f"sample {b} matches no keep/drop outcome"
    seen.add(match[0])
  assert {"both dropped", "both kept"} <= seen and len(seen) >= 3
  # At eval the block is deterministic and equals the same block without drop path.
  y_eval = block.apply(variables, x, train=False)
  np.testing.assert_array_equal(y_eval, FocalNetBlock(focal_level=2, focal_window=3).apply(variables, x))


def nn_layer_norm(p, v):
  mu = v.mean(-1, keepdims=True)
  var = ((v - mu) ** 2).mean(-1, keepdims=True)
  return (v - mu) / jnp.sqrt(var + 1e-5) * p["scale"] + p["bias"]


# --- what a LayerNorm writes (norm_dtype) ---------------------------------------------------


def _arithmetic(jaxpr) -> list:
  """The equations of `jaxpr` that compute (not conversions, not calls), nested jaxprs included."""
  found = []
  for eqn in jaxpr.eqns:
    subs = list(jax.extend.core.jaxprs_in_params(eqn.params))
    found += [eqn] if not subs and eqn.primitive.name != "convert_element_type" else []
    for sub in subs:
      found += _arithmetic(sub)
  return found


@pytest.mark.parametrize("input_dtype", [jnp.float32, jnp.bfloat16])
def test_a_bfloat16_layer_norm_computes_in_float32_and_rounds_only_its_output(input_dtype):
  x = (3.0 + jax.random.normal(jax.random.key(0), (2, 4, 4, 32))).astype(input_dtype)
  params = {"params": {"scale": 1.0 + 0.1 * jax.random.normal(jax.random.key(1), (32,)),
                       "bias": 0.1 * jax.random.normal(jax.random.key(2), (32,))}}
  narrow, wide = layer_norm("ln", jnp.float32, jnp.bfloat16), layer_norm("ln", jnp.float32)
  y = narrow.apply(params, x)
  assert y.dtype == jnp.bfloat16 and wide.apply(params, x).dtype == jnp.float32
  # Mean, variance, normalisation and the affine map are float32 arithmetic even on a bfloat16
  # input: bfloat16 appears only in conversions (of the input, and of the result) ...
  arithmetic = _arithmetic(jax.make_jaxpr(narrow.apply)(params, x).jaxpr)
  assert sum(e.primitive.name == "reduce_sum" for e in arithmetic) >= 2
  assert {v.aval.dtype for e in arithmetic for v in e.outvars if jnp.issubdtype(v.aval.dtype, jnp.floating)} == {
      jnp.dtype(jnp.float32)}
  # ... and so is everything up to the output: it is the float32 LayerNorm's, rounded once.
  np.testing.assert_array_equal(y, wide.apply(params, x).astype(jnp.bfloat16))
  np.testing.assert_allclose(wide.apply(params, x), nn_layer_norm(params["params"], x.astype(jnp.float32)),
                             rtol=1e-5, atol=1e-5)


def test_a_bad_norm_dtype_names_the_choices():
  for bad in ("bf16", "float16", jnp.int8, 3):
    with pytest.raises(ValueError, match=r"norm_dtype=.* must be None \(LayerNorms write float32\) or one of "
                                         r"'float32', 'bfloat16'"):
      layer_norm("ln", jnp.float32, bad)
  assert resolve_norm_dtype("bfloat16") == jnp.bfloat16 and resolve_norm_dtype(None) is None
