"""Parameter counts, multiply-adds and stage shapes against the paper's tables (the README's
model table; docs/model.md), and the `--override` syntax every tool shares.

Everything is abstract (eval_shape / make_jaxpr): no weights are allocated, so even the
750M-parameter huge models are checked in about a second each.
"""
import argparse

import jax
import jax.numpy as jnp
import pytest

from focalnet_jax.tools import cli, summary
from focalnet_jax.model.variants import create_model, list_models

# The paper's tables: params with the published head; GFLOPs at 224 (multiply-adds / 1e9).
SPEC = {
    "focalnet_tiny_srf": (28_427_116, 4.41),
    "focalnet_tiny_lrf": (28_647_928, 4.49),
    "focalnet_small_srf": (49_891_216, 8.61),
    "focalnet_small_lrf": (50_342_440, 8.73),
    "focalnet_base_srf": (88_148_144, 15.26),
    "focalnet_base_lrf": (88_749_768, 15.42),
    "focalnet_tiny_iso": (5_880_280, 1.11),
    "focalnet_small_iso": (22_376_344, 4.30),
    "focalnet_base_iso": (87_255_832, 16.93),
    "focalnet_large_fl3": (239_134_898, None),
    "focalnet_large_fl4": (239_315_402, None),
    "focalnet_xlarge_fl3": (408_787_378, None),
    "focalnet_xlarge_fl4": (409_028_042, None),
    "focalnet_huge_fl3": (745_276_338, None),
    "focalnet_huge_fl4": (747_989_578, None),
}
# The 22K models with a 1000-class head.
SPEC_1K_HEAD = {
    "focalnet_large_fl3": 207_100_744,
    "focalnet_xlarge_fl4": 366_322_784,
    "focalnet_huge_fl4": 689_277_664,
}


def test_spec_covers_every_variant():
  assert sorted(SPEC) == sorted(list_models())


@pytest.mark.parametrize("name", list(SPEC))
def test_params_and_gflops_match_the_paper(name):
  params, gflops = SPEC[name]
  model = create_model(name)
  variables = summary.abstract_variables(model)
  assert summary.count_params(model, variables=variables) == params
  if gflops is None:
    return
  ours = summary.count_macs(model, 224, variables=variables) / 1e9
  assert abs(ours - gflops) / gflops < 0.02
  # The count reproduces the official flops(): it agrees to the table's two decimals.
  assert abs(ours - gflops) <= 0.005 + 1e-9, ours


@pytest.mark.parametrize("name", ["focalnet_tiny_lrf", "focalnet_base_iso"])
def test_dense_and_conv_macs_carry_the_count(name):
  # Without the official elementwise terms (norms, gate products) the count drops < 1%.
  raw = summary.count_macs(create_model(name), 224, include_elementwise=False) / 1e9
  assert 0.99 < raw / SPEC[name][1] < 1.0


@pytest.mark.parametrize("name,params", list(SPEC_1K_HEAD.items()))
def test_params_with_1k_head(name, params):
  assert summary.count_params(create_model(name, num_classes=1000)) == params


def test_macs_do_not_depend_on_implementation_switches():
  base = create_model("focalnet_tiny_srf", depths=(1, 1, 2, 1))
  ref = summary.count_macs(base, 64)
  # shift-based depthwise convs and remat are traced as the xla conv without remat.
  assert summary.count_macs(base.with_execution(depthwise="shift", remat=True), 64) == ref
  # bfloat16 compute does the same multiply-adds.
  assert summary.count_macs(base.clone(dtype=jnp.bfloat16), 64) == ref


def test_macs_scale_with_resolution_and_levels():
  model = create_model("focalnet_tiny_srf", depths=(1, 1, 1, 1), num_classes=0)
  # Every term is per token when there is no head: 4x the pixels, 4x the MACs
  # (except the official final-norm term, which scales the same way).
  assert summary.count_macs(model, 128) == 4 * summary.count_macs(model, 64)
  # One more focal level adds its depthwise conv (k=7) and one f output channel per block.
  more = summary.count_macs(model.clone(focal_levels=3), 64)
  assert more > summary.count_macs(model, 64)


def test_jaxpr_macs_counts_matmuls_and_convs_through_transformations():
  a = jax.ShapeDtypeStruct((3, 4), jnp.float32)
  b = jax.ShapeDtypeStruct((4, 5), jnp.float32)
  mm = lambda x, y: x @ y  # noqa: E731
  assert summary.jaxpr_macs(jax.make_jaxpr(mm)(a, b).jaxpr) == 60
  assert summary.jaxpr_macs(jax.make_jaxpr(jax.jit(mm))(a, b).jaxpr) == 60
  assert summary.jaxpr_macs(jax.make_jaxpr(jax.checkpoint(mm))(a, b).jaxpr) == 60

  def scanned(x, y):
    return jax.lax.scan(lambda c, _: (c, c @ y), x, None, length=7)[1]

  assert summary.jaxpr_macs(jax.make_jaxpr(scanned)(a, b).jaxpr) == 7 * 60
  # A grouped conv: output (1, 6, 6, 8), kernel 3x3 with 8 / 4 = 2 input features per group.
  x = jax.ShapeDtypeStruct((1, 6, 6, 8), jnp.float32)
  k = jax.ShapeDtypeStruct((3, 3, 2, 8), jnp.float32)
  conv = lambda x, k: jax.lax.conv_general_dilated(  # noqa: E731
      x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=4
  )
  assert summary.jaxpr_macs(jax.make_jaxpr(conv)(x, k).jaxpr) == 6 * 6 * 8 * 3 * 3 * 2


@pytest.mark.parametrize("name", ["focalnet_tiny_srf", "focalnet_large_fl4"])
def test_stage_shapes_hierarchical(name):
  model = create_model(name)
  c = model.embed_dim
  v = summary.abstract_variables(model)
  assert summary.stage_shapes(model, 224, v) == [(56, 56, c), (28, 28, 2 * c), (14, 14, 4 * c), (7, 7, 8 * c)]
  assert summary.stage_shapes(model, 384, v) == [(96, 96, c), (48, 48, 2 * c), (24, 24, 4 * c), (12, 12, 8 * c)]


def test_stage_shapes_isotropic():
  model = create_model("focalnet_small_iso")
  v = summary.abstract_variables(model)
  assert summary.stage_shapes(model, 224, v) == [(14, 14, 384)]
  assert summary.stage_shapes(model, 384, v) == [(24, 24, 384)]


def test_summarize_name_and_model():
  row = summary.summarize("focalnet_tiny_iso")
  assert row["params"] == SPEC["focalnet_tiny_iso"][0]
  assert row["image_size"] == 224 and round(row["gflops"], 2) == 1.11
  assert row["stage_shapes"] == [(14, 14, 192)]
  # Overrides go through create_model; a model instance needs an explicit size.
  small = summary.summarize("focalnet_tiny_srf", 64, depths=(1, 1, 1, 1), embed_dim=16)
  assert small["stage_shapes"] == [(16, 16, 16), (8, 8, 32), (4, 4, 64), (2, 2, 128)]
  model = create_model("focalnet_tiny_srf", depths=(1, 1, 1, 1), embed_dim=16)
  assert summary.summarize(model, 64)["params"] == small["params"]
  with pytest.raises(ValueError, match="image_size"):
    summary.summarize(model)


def test_cli_prints_table(capsys):
  summary.main(["focalnet_tiny_srf"])
  out = capsys.readouterr().out
  assert "28,427,116" in out and "4.41" in out
  assert "56x56x96" in out and "7x7x768" in out
  summary.main(["focalnet_tiny_srf", "--image-size", "384", "--override", "focal_levels=3"])
  out = capsys.readouterr().out
  assert "28,647,928" in out and "96x96x96" in out and "12x12x768" in out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["focalnet_tiny"], "Did you mean"),
        (["focalnet_tiny_srf", "--image-size", "100"], "multiples of 32"),
        (["focalnet_tiny_srf", "--override", "focal_window=5"], "Unknown FocalNet field 'focal_window'"),
        (["focalnet_tiny_srf", "--override", "use_gating=maybe"], "use_gating takes true or false"),
        (["focalnet_tiny_srf", "--override", "depths=3x"], "depths takes a list of ints"),
        (["focalnet_tiny_srf", "--override", "depths=(2,2,18,2)"], "Lists are written in JSON"),
        ([], "exactly one of"),
    ],
)
def test_cli_errors(argv, message, capsys):
  with pytest.raises(SystemExit) as e:
    summary.main(argv)
  assert e.value.code == 2
  assert message in capsys.readouterr().err


def test_cli_override_false_is_false(capsys):
  # 'false' once fell through as the string 'false', which is truthy: the gated model's count.
  summary.main(["focalnet_tiny_srf", "--override", "use_gating=false"])
  assert "28,413,832" in capsys.readouterr().out


@pytest.mark.parametrize(
    "text,expected",
    [
        ("use_gating=false", ("use_gating", False)),
        ("depths=[2,2,18,2]", ("depths", [2, 2, 18, 2])),
        ("focal_levels=4", ("focal_levels", 4)),
        ("focal_windows=[3,3,5,5]", ("focal_windows", [3, 3, 5, 5])),
        ("mlp_ratio=4", ("mlp_ratio", 4.0)),
        ("layerscale_value=1e-6", ("layerscale_value", 1e-6)),
        ("dtype=bfloat16", ("dtype", "bfloat16")),
        ("interaction=add", ("interaction", "add")),
        ('interaction="add"', ("interaction", "add")),
        ("norm_dtype=bfloat16", ("norm_dtype", "bfloat16")),
    ],
)
def test_override_values_are_json_or_a_bare_word(text, expected):
  key, value = cli.parse_override(text)
  assert (key, value) == expected and type(value) is type(expected[1])


@pytest.mark.parametrize(
    "text,message",
    [
        ("use_gating=maybe", "use_gating takes true or false, got the string 'maybe'"),
        ("use_gating=1", "use_gating takes true or false, got int 1"),
        ("use_gating=True", "use_gating takes true or false"),  # Python's spelling is not JSON
        ("num_classes=true", "num_classes takes an int, got bool true"),
        ("num_classes=10.5", "num_classes takes an int"),
        ("depths=3x", "depths takes a list of ints"),
        ("depths=2", "depths takes a list of ints"),
        ("focal_levels=[3,x]", "focal_levels takes an int, or a list of ints"),
        ("mlp_ratio=big", "mlp_ratio takes a number"),
        ("interaction=1", "interaction takes a string"),
        ("dtype=float33", "dtype takes a dtype name"),
        ("norm_dtype=bf16", "norm_dtype takes a dtype name such as bfloat16, or null"),
        ("num_class=10", "Unknown FocalNet field 'num_class'. Did you mean num_classes?"),
        ("use_gating", "expects KEY=VALUE"),
        # How the model runs is not the model: parameters and GFLOPs do not depend on it.
        ("remat=dots", "remat is an execution switch (now execution.remat), not part of the model"),
        ("depthwise_impl=xla", "now execution.depthwise"),
    ],
)
def test_override_errors_name_field_value_and_type(text, message):
  with pytest.raises(argparse.ArgumentTypeError) as e:
    cli.parse_override(text)
  assert message in str(e.value)


def test_every_focalnet_field_can_be_overridden():
  # A field with an annotation the parser does not know would be refused: add it to the table.
  for key, annotation in cli.focalnet_fields().items():
    assert annotation in cli._CHECKS, (key, annotation)
