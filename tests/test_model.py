"""Behaviour of the FocalNet model that users rely on, on tiny models and small images.

The focal modulation is checked against an independent numpy implementation of the
equations in docs/model.md, "Focal modulation" (explicit padding and loops), for every combination
of the ablation switches and both depthwise-conv implementations.
"""
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from focalnet_jax.kernels import depthwise
from focalnet_jax.model import DropPath, FocalModulation, FocalNet, FocalNetBlock, nearest_multiples
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
      depthwise_impl=impl,
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
  module = FocalModulation(focal_level=L, focal_window=window, depthwise_impl=impl)
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


def test_drop_path_rates_rise_linearly_over_blocks():
  model = tiny_model(depths=(1, 1, 2, 1), drop_path_rate=0.3)
  bound = model.bind(abstract_variables(model))
  rates = [r for stage in bound.layers for r in stage.drop_path_rates]
  np.testing.assert_allclose(rates, np.linspace(0.0, 0.3, 5))
  assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.3)


# --- the whole network -------------------------------------------------------------------
# Values come from numpy (compiling `init` costs more than all these tests' forwards), and
# most tests share one architecture and input shape so that eager ops compile once.


@pytest.fixture(scope="module")
def tiny():
  # 'xla' depthwise convs compile faster eagerly; 'shift' is checked against it above.
  model = tiny_model(depths=(1, 1, 1, 1), depthwise_impl="xla")
  return model, random_variables(model)


@pytest.fixture(scope="module")
def iso():
  """A one-stage isotropic model: the cheapest network with several blocks."""
  model = create_model(
      "focalnet_tiny_iso", embed_dim=16, depths=(3,), num_classes=10, drop_path_rate=0.0,
      depthwise_impl="xla",
  )
  return model, random_variables(model)


def test_model_eval_ignores_drop_path_and_train_is_stochastic(iso):
  model, variables = iso
  x = images(0, size=32, batch=8)
  droppy = model.clone(drop_path_rate=0.5)
  a = droppy.apply(variables, x, train=False)
  np.testing.assert_array_equal(a, droppy.apply(variables, x, train=False))
  np.testing.assert_array_equal(a, model.apply(variables, x))
  t1 = droppy.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
  t2 = droppy.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
  assert not np.allclose(t1, t2)
  assert not np.allclose(t1, a)  # training really drops branches (per sample: see above)


def test_bfloat16_compute_stays_close_to_float32(tiny):
  model, variables = tiny
  bf16 = model.clone(dtype=jnp.bfloat16)
  params = abstract_variables(bf16)["params"]
  assert all(v.dtype == jnp.float32 for v in jax.tree_util.tree_leaves(params))
  x = images(1, size=32, batch=4)
  logits16 = bf16.apply(variables, x)
  logits32 = model.apply(variables, x)
  assert logits16.dtype == jnp.float32 and logits32.dtype == jnp.float32
  rel = float(jnp.linalg.norm(logits16 - logits32) / jnp.linalg.norm(logits32))
  # Measured 1.0e-2 to 2.0e-2 over 5 seeds with these O(1) random weights (6e-3 to 8e-3
  # with the official init): bfloat16 keeps 8 significant bits (one rounding is <= 2**-9
  # = 2e-3 relative); q * modulator multiplies two rounded terms and a few roundings per
  # layer accumulate over 4 stages, while the float32 LayerNorms re-normalise every block.
  assert rel < 4e-2, rel
  assert rel > 1e-4  # the clone really computed in bfloat16


def test_per_stage_focal_levels_and_windows():
  model = tiny_model(depths=(1, 1, 1, 1), focal_levels=(1, 2, 3, 2), focal_windows=[3, 5, 3, 1])
  params = abstract_variables(model)["params"]
  for i, (levels, window) in enumerate(zip((1, 2, 3, 2), (3, 5, 3, 1))):
    c = 16 * 2**i
    mod = params[f"layers_{i}"]["blocks_0"]["modulation"]
    assert sorted(k for k in mod if k.startswith("focal_layers_")) == [f"focal_layers_{l}" for l in range(levels)]
    for l in range(levels):
      k = window + 2 * l
      assert mod[f"focal_layers_{l}"].shape == (k, k, 1, c)
    assert mod["f"]["kernel"].shape == (c, 2 * c + levels + 1)


def test_focal_levels_zero_builds_and_runs(iso):
  model, _ = iso
  zero = model.clone(focal_levels=0)
  variables = random_variables(zero)
  mod = variables["params"]["layers_0"]["blocks_0"]["modulation"]
  assert not any(k.startswith("focal_layers_") for k in mod)
  assert mod["f"]["kernel"].shape == (16, 2 * 16 + 1)  # q, ctx and the global gate
  out = zero.apply(variables, images(0, size=32))
  assert out.shape == (2, 10) and np.all(np.isfinite(out))


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(focal_windows=4), "positive odd"),
        (dict(focal_windows=(3, 3, 2, 3)), "positive odd"),
        (dict(focal_levels=-1), ">= 0"),
        (dict(focal_levels=(1, 2, 3)), "has 3 entries but the model has 4 stages"),
        (dict(focal_windows=(3, 3)), "one value per stage"),
        (dict(interaction="concat"), "'multiply' or 'add'"),
        (dict(depthwise_impl="fft"), "is not one of"),
        (dict(focal_levels=0, use_global_context=False), "no context"),
    ],
)
def test_invalid_architecture_values_raise(overrides, message):
  with pytest.raises(ValueError, match=message):
    tiny_model(**overrides)


def test_unknown_names_raise_with_suggestions():
  with pytest.raises(ValueError, match="Did you mean focalnet_tiny_srf"):
    create_model("focalnet_tiny_srff")
  # An unknown field is a TypeError, as for any unexpected keyword argument.
  with pytest.raises(TypeError, match="focal_window.*valid fields"):
    create_model("focalnet_tiny_srf", focal_window=3)


@pytest.mark.parametrize(
    "name,size,stride",
    [("focalnet_tiny_srf", 100, 32), ("focalnet_tiny_srf", 16, 32), ("focalnet_tiny_iso", 40, 16), ("focalnet_tiny_iso", 8, 16)],
)
def test_image_size_must_be_a_multiple_of_the_stride(name, size, stride):
  model = create_model(name)
  nearest = nearest_multiples(size, stride)
  sides = ", ".join(map(str, nearest))
  with pytest.raises(ValueError, match=f"multiples of {stride}.*Nearest valid sides: {sides};.*224"):
    abstract_variables(model, size)


def test_nearest_multiples_are_just_below_and_above_and_at_least_the_unit():
  assert nearest_multiples(100, 32) == [96, 128]
  assert nearest_multiples(40, 16) == [32, 48]
  assert nearest_multiples(16, 32) == [32]
  assert nearest_multiples(64, 32) == [64]
  assert nearest_multiples(0, 8) == [8]


def test_auto_depthwise_impl_is_resolved_when_the_model_is_built():
  concrete = depthwise.resolve("auto")
  assert concrete in ("native", "shift", "xla")
  assert create_model("focalnet_tiny_srf").depthwise_impl == concrete
  assert FocalNet(depthwise_impl="auto").depthwise_impl == concrete
  assert FocalModulation(focal_level=1, focal_window=3).depthwise_impl == concrete
  assert FocalNetBlock(focal_level=1, focal_window=3).depthwise_impl == concrete
  assert tiny_model(depthwise_impl="xla").clone(depthwise_impl="auto").depthwise_impl == concrete
  assert tiny_model(depthwise_impl="shift").depthwise_impl == "shift"  # a concrete name is kept


def test_no_positional_state_any_resolution(tiny):
  model, variables = tiny
  # The same parameter tree whatever resolution the model is built at...
  shapes = lambda size: jax.tree_util.tree_map(lambda a: a.shape, abstract_variables(full, size))  # noqa: E731
  full = create_model("focalnet_tiny_srf", depthwise_impl="xla")
  assert shapes(224) == shapes(384) == shapes(256)
  # ...and the same weights run at other sizes.
  assert model.apply(variables, images(1, size=64)).shape == (2, 10)


def test_features_strides_and_pooled_output(tiny):
  model, variables = tiny
  x = images(2, size=32)
  maps = model.apply(variables, x, method=model.features)
  assert [m.shape for m in maps] == [(2, 8, 8, 16), (2, 4, 4, 32), (2, 2, 2, 64), (2, 1, 1, 128)]
  pooled_model = model.clone(num_classes=0)
  no_head = {"params": {k: v for k, v in variables["params"].items() if k != "head"}}
  assert "head" not in abstract_variables(pooled_model)["params"]
  pooled = pooled_model.apply(no_head, x)
  assert pooled.shape == (2, 128) and pooled.dtype == jnp.float32
  final = model.apply(variables, x, method=model.forward_features)
  np.testing.assert_allclose(pooled, final.mean(axis=(1, 2)), rtol=1e-6, atol=1e-6)
  head = variables["params"]["head"]
  np.testing.assert_allclose(
      model.apply(variables, x), pooled @ head["kernel"] + head["bias"], rtol=1e-5, atol=1e-5
  )


def test_isotropic_model_runs_at_other_sizes(iso):
  model, variables = iso
  maps = model.apply(variables, images(1, size=48), method=model.features)
  assert [m.shape for m in maps] == [(2, 3, 3, 16)]


def test_remat_gives_identical_outputs_and_gradients(iso):
  model, variables = iso
  x = images(3, size=32)
  remat = model.clone(remat=True)
  assert jax.tree_util.tree_structure(abstract_variables(remat)) == jax.tree_util.tree_structure(variables)

  def loss(m):
    return lambda p: jnp.sum(m.apply({"params": p}, x) ** 2)

  l1, g1 = jax.value_and_grad(loss(model))(variables["params"])
  l2, g2 = jax.value_and_grad(loss(remat))(variables["params"])
  np.testing.assert_allclose(l1, l2, rtol=1e-6)
  tree_allclose(g1, g2, rtol=1e-5, atol=1e-6)


def test_intermediates_expose_modulator_and_gates(iso):
  model, variables = iso
  x = images(4, size=32)
  out, state = model.apply(variables, x, mutable=["intermediates"])
  np.testing.assert_array_equal(out, model.apply(variables, x))
  sown = state["intermediates"]["layers_0"]
  assert sorted(sown) == ["blocks_0", "blocks_1", "blocks_2"]
  (modulator,) = sown["blocks_0"]["modulation"]["modulator"]
  (gates,) = sown["blocks_0"]["modulation"]["gates"]
  assert modulator.shape == (2, 2, 2, 16)
  assert gates.shape == (2, 2, 2, 3 + 1)  # focal_levels 3 plus the global gate
  # Gates are raw linear outputs (no sigmoid or softmax): some are negative.
  assert float(gates.min()) < 0.0
  no_gate = model.clone(use_gating=False)
  _, state = no_gate.apply(random_variables(no_gate), x, mutable=["intermediates"])
  assert "gates" not in state["intermediates"]["layers_0"]["blocks_0"]["modulation"]
