"""`f_align`: the modulation's fused `f` matmul writing q, f_z and the gates at aligned offsets.

An execution choice: the same parameters (names, shapes, initialisers) and the same logits and
gradients as the plain nn.Dense layout (f_align=1), and a config field that reaches the model
without being recorded as its architecture.
"""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import train_utils
from test_configs import load
from test_model import images, random_variables, tree_allclose
from focalnet_jax.kernels import aligned_projection
from focalnet_jax.model import Execution, FocalModulation
from focalnet_jax.model.layers import dense_init
from focalnet_jax.model.variants import create_model
from focalnet_jax.train import config_check
from focalnet_jax.train.state import build_model

# C = 12, L = 2: with align 8, q is 0..12, z starts at 16 and the gates at 32, so segments move.
SMALL = dict(embed_dim=12, depths=(1, 1), num_classes=10, execution=Execution(depthwise="xla"), drop_path_rate=0.0)
ABLATIONS = {"default": {}, "no_gating": {"use_gating": False},
             "no_global_context": {"use_global_context": False}}


def small_model(**overrides):
  return create_model("focalnet_tiny_srf", **{**SMALL, **overrides})


def shapes(tree):
  return jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), tree)


@pytest.fixture(scope="module")
def reference():
  """Per ablation: (variables, images, logits, gradients) of the plain layout, computed once."""
  cache = {}

  def get(name):
    if name not in cache:
      model = small_model(**ABLATIONS[name])
      variables = random_variables(model)
      x = images(0, size=32)
      cache[name] = (variables, x, *logits_and_grads(model, variables, x))
    return cache[name]

  return get


def logits_and_grads(model, variables, x):
  weights = np.random.default_rng(1).normal(size=(x.shape[0], model.num_classes))
  weights = jnp.asarray(weights, jnp.float32)

  def loss(params):
    logits = model.apply({**variables, "params": params}, x)
    return jnp.sum(logits * weights), logits

  (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
  return logits, grads


@pytest.mark.parametrize("align", [8, 16])
@pytest.mark.parametrize("ablation", sorted(ABLATIONS))
def test_same_parameters_logits_and_gradients_as_the_plain_layout(reference, ablation, align):
  variables, x, logits, grads = reference(ablation)
  model = small_model(execution=Execution(depthwise="xla", f_align=align), **ABLATIONS[ablation])
  assert model.execution.f_align == align
  abstract = jax.eval_shape(model.init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  assert shapes(abstract) == shapes(variables)  # same names and shapes: checkpoints do not see it
  # The f matmul of each stage (C = 12 at 8x8, C = 24 at 4x4) writes the padded width.
  gates = model.focal_levels + 1 if ABLATIONS[ablation].get("use_gating", True) else 0
  gates -= not ABLATIONS[ablation].get("use_global_context", True)
  jaxpr = str(jax.make_jaxpr(model.apply)(variables, x))
  for c, side in ((12, 8), (24, 4)):
    width = aligned_projection.segment_layout((c, c, gates), align)[1]
    assert f"f32[2,{side},{side},{width}] = dot_general" in jaxpr
  aligned_logits, aligned_grads = logits_and_grads(model, variables, x)
  np.testing.assert_allclose(aligned_logits, logits, rtol=1e-5, atol=1e-6)
  tree_allclose(aligned_grads, grads, rtol=1e-5, atol=1e-6)


def test_aligned_layout_is_the_one_documented():
  layout = aligned_projection.segment_layout
  assert layout((96, 96, 3), 8) == ((0, 96, 192), 200)  # FocalNet-T's first stage: 195 -> 200 wide
  assert layout((12, 12, 3), 8) == ((0, 16, 32), 40)
  assert layout((12, 12, 3), 16) == ((0, 16, 32), 48)
  assert layout((12, 12, 0), 8) == ((0, 16, 32), 32)  # no gating: an empty gate segment
  assert layout((12, 12, 3), 1) == ((0, 12, 24), 27)  # align 1: the plain layout
  padded = aligned_projection.pad_segments(jnp.arange(1, 28, dtype=jnp.float32), (12, 12, 3), 8)
  expected = np.zeros(40, np.float32)
  expected[0:12], expected[16:28], expected[32:35] = np.split(np.arange(1, 28), [12, 24])
  np.testing.assert_array_equal(padded, expected)


def test_the_matmul_writes_the_padded_width_and_returns_the_dense_segments():
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 12), jnp.float32)
  dense = nn.Dense(27, kernel_init=dense_init)
  aligned = aligned_projection.AlignedSplitDense((12, 12, 3), 8, kernel_init=dense_init)
  variables = dense.init(jax.random.key(3), x)
  # Same names, shapes and initial values (same initialisers, same rng streams).
  tree_allclose(aligned.init(jax.random.key(3), x), variables, rtol=0, atol=0)
  jaxpr = jax.make_jaxpr(lambda v: aligned.apply(v, x))(variables)
  dots = [e for e in jaxpr.eqns if e.primitive.name == "dot_general"]
  assert [d.outvars[0].aval.shape for d in dots] == [(2, 4, 4, 40)]
  q, z, gates = aligned.apply(variables, x)
  want = jnp.split(dense.apply(variables, x), [12, 24], axis=-1)
  for got, ref in zip((q, z, gates), want):
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
  # Mixed precision: computed and returned in the compute dtype, like nn.Dense.
  bf16 = aligned.clone(dtype=jnp.bfloat16).apply(variables, x)
  ref16 = jnp.split(dense.clone(dtype=jnp.bfloat16).apply(variables, x), [12, 24], axis=-1)
  for got, ref in zip(bf16, ref16):
    assert got.dtype == ref.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(ref, np.float32),
                               rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("bad", [0, -8, 8.0, "8", True, None])
def test_f_align_must_be_a_positive_int(bad):
  with pytest.raises(ValueError, match="f_align"):
    small_model(execution=Execution(f_align=bad))
  with pytest.raises(ValueError, match="f_align"):
    FocalModulation(focal_level=2, focal_window=3, execution=Execution(f_align=bad))


def test_config_field_reaches_the_model_but_not_its_recorded_architecture():
  path = os.path.join(train_utils.ROOT, "configs", "focalnet_t.py")
  config = load(path, "--config.execution.f_align=8")
  model, overrides = build_model(config, 1000)
  assert model.execution.f_align == 8
  assert "f_align" not in overrides and "execution" not in overrides
  assert build_model(load(path), 1000)[0].execution.f_align == 1  # the default: the plain layout
  config_check.check_values(config)
  # A run may resume under another layout: the states it goes through are the same.
  saved = json.loads(load(path).to_json_best_effort())
  assert config_check.config_changes(saved, config) == []
  with pytest.raises(ValueError, match="execution.f_align=0 must be an int >= 1"):
    config_check.check_values(load(path, "--config.execution.f_align=0"))


def test_benchmark_option_sets_the_field_and_names_the_row(tmp_path):
  from focalnet_jax.tools import benchmark

  path = tmp_path / "small.py"
  path.write_text("from configs import default\n\n\ndef get_config(arg=None):\n"
                  "  c = default.get_config(arg)\n"
                  "  c.model.embed_dim, c.model.depths, c.model.num_classes = 8, (1, 1), 5\n"
                  "  return c\n")
  args = benchmark.parser().parse_args(["--config", str(path), "--f-align", "8"])
  assert benchmark.benchmark_config(args, 32, 0).execution.f_align == 8
  runner = benchmark.make_runner(args, "jax:0", 32)
  assert runner.model.execution.f_align == 8 and runner.name.endswith(", f_align 8)")
  plain = benchmark.make_runner(benchmark.parser().parse_args(["--config", str(path)]), "jax:0", 32)
  assert "f_align" not in plain.name
