"""Behaviour of the whole FocalNet that users rely on, on tiny models and small images: stochastic
depth, precision, per-stage fields, validation, resolutions, features, remat and intermediates."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focalnet_jax.kernels import depthwise
from focalnet_jax.model import Execution, FocalModulation, FocalNet, FocalNetBlock, nearest_multiples
from focalnet_jax.model.variants import create_model

from test_model import abstract_variables, images, random_variables, tiny_model, tree_allclose


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
  model = tiny_model(depths=(1, 1, 1, 1), execution=Execution(depthwise="xla"))
  return model, random_variables(model)


@pytest.fixture(scope="module")
def iso():
  """A one-stage isotropic model: the cheapest network with several blocks."""
  model = create_model(
      "focalnet_tiny_iso", embed_dim=16, depths=(3,), num_classes=10, drop_path_rate=0.0,
      execution=Execution(depthwise="xla"),
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


def module_outputs(model, variables, x) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(logits, {module path: its output}) of one forward (flax's capture_intermediates)."""
  logits, state = model.apply(variables, x, capture_intermediates=True)
  flat = flax.traverse_util.flatten_dict(state["intermediates"])
  return logits, {"/".join(k[:-1]): v[0] for k, v in flat.items() if k[-1] == "__call__"}


@pytest.mark.parametrize("arch", [{}, dict(use_layerscale=True, use_postln=True, use_postln_in_modulation=True)],
                         ids=["pre-norm", "post-norm+layerscale"])
def test_bfloat16_norms_make_the_residual_stream_bfloat16_and_keep_the_head_float32(arch):
  model = tiny_model(depths=(1, 1, 1, 1), execution=Execution(depthwise="xla"), dtype=jnp.bfloat16, **arch)
  narrow = model.clone(norm_dtype="bfloat16")
  assert narrow.norm_dtype == jnp.bfloat16
  # The same parameters: names, shapes, dtypes (a checkpoint loads into either).
  tree = lambda m: jax.tree.map(lambda a: (a.shape, a.dtype), abstract_variables(m))  # noqa: E731
  assert tree(narrow) == tree(model)
  variables = random_variables(model)
  x = images(1, size=32, batch=4)
  logits, out = module_outputs(narrow, variables, x)
  ref_logits, ref = module_outputs(model, variables, x)
  # The trunk's LayerNorms: the stem's, 3 downsamples', 2 per block (and the modulation's post-LN).
  norms = [p for p in out if p.rsplit("/", 1)[-1] in ("norm", "norm1", "norm2", "ln") and p != "norm"]
  assert len(norms) == 1 + 3 + 4 * (2 + arch.get("use_postln_in_modulation", False))
  blocks = [p for p in out if p.rsplit("/", 1)[-1].startswith("blocks_")]  # the residual stream
  assert len(blocks) == 4
  for path in norms + blocks:
    assert (out[path].dtype, ref[path].dtype) == (jnp.bfloat16, jnp.float32), path
  # The head stays float32: its LayerNorm, the pooling and the logits.
  assert out["norm"].dtype == logits.dtype == jnp.float32
  rel = float(jnp.linalg.norm(logits - ref_logits) / jnp.linalg.norm(ref_logits))
  # bfloat16 rounding of every LayerNorm output and of the stream (2**-9 relative each), on top of
  # bfloat16 compute; same scale as bfloat16 compute against float32 (the test above).
  assert 1e-4 < rel < 4e-2, rel


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
        (dict(execution=Execution(depthwise="fft")), r"execution.depthwise='fft' must be one of \('auto', 'xla'"),
        (dict(focal_levels=0, use_global_context=False), "no context"),
        # A string is truthy: 'false' must not silently build the gated model.
        (dict(use_gating="false"), r"use_gating='false' must be True or False"),
        (dict(use_layerscale=1), r"use_layerscale=1 must be True or False"),
        (dict(depths=3), r"depths=3 must be a sequence of ints"),
        (dict(norm_dtype="bf16"), r"norm_dtype='bf16' must be None \(LayerNorms write float32\) or one of "
                                  r"'float32', 'bfloat16'"),
        (dict(norm_dtype="float16"), r"norm_dtype='float16' must be None"),
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


def test_auto_depthwise_is_resolved_when_the_model_is_built():
  concrete = depthwise.resolve("auto")
  assert concrete in ("native", "shift", "xla")
  assert create_model("focalnet_tiny_srf").execution.depthwise == concrete
  assert FocalNet(execution=Execution(depthwise="auto")).execution.depthwise == concrete
  assert FocalModulation(focal_level=1, focal_window=3).execution.depthwise == concrete
  assert FocalNetBlock(focal_level=1, focal_window=3).execution.depthwise == concrete
  xla = tiny_model(execution=Execution(depthwise="xla"))
  assert xla.with_execution(depthwise="auto").execution.depthwise == concrete
  assert xla.with_execution(depthwise="shift").execution.depthwise == "shift"  # a concrete name is kept


def test_no_positional_state_any_resolution(tiny):
  model, variables = tiny
  # The same parameter tree whatever resolution the model is built at...
  shapes = lambda size: jax.tree_util.tree_map(lambda a: a.shape, abstract_variables(full, size))  # noqa: E731
  full = create_model("focalnet_tiny_srf", execution=Execution(depthwise="xla"))
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


@pytest.mark.parametrize("policy", ["block", "dots", True])
def test_remat_gives_identical_outputs_and_gradients(iso, policy):
  model, variables = iso
  x = images(3, size=32)
  remat = model.with_execution(remat=policy)
  assert remat.execution.remat == ("block" if policy is True else policy) and model.execution.remat == "none"
  assert jax.tree_util.tree_structure(abstract_variables(remat)) == jax.tree_util.tree_structure(variables)

  def loss(m):
    return lambda p: jnp.sum(m.apply({"params": p}, x) ** 2)

  l1, g1 = jax.value_and_grad(loss(model))(variables["params"])
  l2, g2 = jax.value_and_grad(loss(remat))(variables["params"])
  np.testing.assert_allclose(l1, l2, rtol=1e-6)
  tree_allclose(g1, g2, rtol=1e-5, atol=1e-6)


def test_remat_policies_keep_what_they_say(iso):
  """'block' keeps each block's input only; 'dots' also keeps its matmul outputs; 'none' keeps
  everything, the elementwise results too."""
  model, variables = iso
  x = images(3, size=32)

  def residual_bytes(policy):
    m = model.with_execution(remat=policy)
    # The vjp function carries the residuals its backward pass reads, as its pytree leaves.
    _, backward = jax.vjp(lambda p: jnp.sum(m.apply({"params": p}, x) ** 2), variables["params"])
    # Activations only (a leading batch axis): the parameters are kept under every policy.
    return sum(leaf.nbytes for leaf in jax.tree.leaves(backward) if leaf.shape[:1] == x.shape[:1])

  none, dots, block = (residual_bytes(p) for p in ("none", "dots", "block"))
  assert block < dots < none, (block, dots, none)
  with pytest.raises(ValueError, match=r"execution.remat='matmuls' must be one of \('none', 'block', 'dots'\)"):
    model.with_execution(remat="matmuls")


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
