"""The backbone API: stage maps equal timm's `features_only` (and HF FocalNetBackbone's last stage)
on converted random weights at 224 and a non-square size; out_indices, norms, padding of odd
sizes and the detection settings."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focalnet_jax import weights
from focalnet_jax.model import Execution
from focalnet_jax.model.backbone import FocalNetBackbone, classifier_params, create_backbone
from test_convert import hf_model, randomize_, rel_err
from torch_refs import import_timm, import_torch

torch = import_torch()
TOL = 1e-4
SHRUNK = dict(embed_dim=16, depths=(1, 1, 2, 1))
TIMM_SHRUNK = dict(embed_dim=16, depths=(1, 1, 2, 1), focal_levels=(3,) * 4)  # focalnet_tiny_lrf, shrunk


def nchw(x: np.ndarray):
  return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def nhwc(t) -> np.ndarray:
  return t.detach().numpy().transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def timm_pair():
  """A random timm FocalNet (tiny-lrf layout, shrunk) and our classifier params converted from it."""
  timm = import_timm()
  classifier = randomize_(timm.models.focalnet._create_focalnet("focalnet_tiny_lrf", num_classes=5, **TIMM_SHRUNK), 3)
  params = weights.convert_state_dict(classifier.state_dict(), "focalnet_tiny_lrf", num_classes=5, **SHRUNK)
  return classifier, params["params"]


def timm_features(classifier, out_indices, x):
  timm = import_timm()
  features = timm.models.focalnet._create_focalnet("focalnet_tiny_lrf", features_only=True, out_indices=out_indices,
                                                   **TIMM_SHRUNK).eval()
  # features_only flattens module names ('layers.0.' -> 'layers_0.') and drops what it does not run.
  renamed = {re.sub(r"^layers\.(\d+)\.", r"layers_\1.", k): v for k, v in classifier.state_dict().items()}
  features.load_state_dict({k: v for k, v in renamed.items() if k in features.state_dict()})
  with torch.no_grad():
    return [nhwc(t) for t in features(nchw(x))], features.feature_info


@pytest.mark.parametrize("size,out_indices", [((224, 224), (0, 1, 2, 3)), ((96, 160), (1, 3))])
def test_stage_maps_equal_timm_features_only(timm_pair, size, out_indices):
  classifier, params = timm_pair
  x = np.random.default_rng(0).standard_normal((2, *size, 3)).astype(np.float32)
  reference, timm_info = timm_features(classifier, out_indices, x)
  backbone = create_backbone("focalnet_tiny_lrf", out_indices=out_indices, execution=Execution(depthwise="xla"), **SHRUNK)
  out = backbone.apply({"params": classifier_params(params)}, x)
  assert len(out) == len(reference) == len(out_indices)
  for ours, ref in zip(out, reference):
    assert ours.shape == ref.shape and rel_err(ours, ref) < TOL
  assert [f.channels for f in backbone.feature_info] == timm_info.channels()
  assert [f.stride for f in backbone.feature_info] == timm_info.reduction()
  assert out.valid_sizes == tuple((size[0] // s, size[1] // s) for s in timm_info.reduction())


def test_last_stage_equals_hf_backbone():
  transformers = pytest.importorskip("transformers")
  hf_config = dict(embed_dim=16, depths=[1, 1, 2, 1], focal_levels=[3] * 4, focal_windows=[3] * 4, num_labels=5)
  classifier = randomize_(hf_model(**hf_config), 4)
  params = weights.convert_state_dict(classifier.state_dict(), "focalnet_tiny_lrf", num_classes=5, **SHRUNK)
  config = transformers.FocalNetConfig(**{**classifier.config.to_dict(), "out_features": ["stage4"]})
  config.hidden_sizes = list(config.hidden_sizes)  # FocalNetBackbone concatenates it to a list
  hf_backbone = transformers.FocalNetBackbone(config).eval()
  hf_backbone.focalnet.load_state_dict(classifier.focalnet.state_dict())
  backbone = create_backbone("focalnet_tiny_lrf", out_indices=(3,), execution=Execution(depthwise="xla"), **SHRUNK)
  x = np.random.default_rng(1).standard_normal((2, 64, 96, 3)).astype(np.float32)
  with torch.no_grad():
    reference = nhwc(hf_backbone(nchw(x)).feature_maps[-1])  # 'stage4'
  assert rel_err(backbone.apply({"params": classifier_params(params["params"])}, x)[0], reference) < TOL


def test_out_norms_are_named_per_output_and_normalise(timm_pair):
  _, params = timm_pair
  x = np.random.default_rng(2).standard_normal((1, 64, 64, 3)).astype(np.float32)
  plain = create_backbone("focalnet_tiny_lrf", out_indices=(0, 2), execution=Execution(depthwise="xla"), **SHRUNK)
  normed = plain.clone(out_norms=True)
  shapes = jax.eval_shape(normed.init, jax.random.key(0), x)["params"]
  assert {"norm0", "norm2"} <= set(shapes) and not {"norm1", "norm3", "layers_3", "norm"} & set(shapes)
  rng = np.random.default_rng(3)
  norms = {f"norm{i}": {"scale": rng.standard_normal(c).astype(np.float32), "bias": rng.standard_normal(c).astype(np.float32)}
           for i, c in ((0, 16), (2, 64))}
  base = {k: v for k, v in classifier_params(params).items() if k != "layers_3"}
  raw = plain.apply({"params": base}, x)
  out = normed.apply({"params": {**base, **norms}}, x)
  for i, r, o in zip((0, 2), raw, out):
    r = np.asarray(r, np.float64)
    expected = (r - r.mean(-1, keepdims=True)) / np.sqrt(r.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(o, expected * norms[f"norm{i}"]["scale"] + norms[f"norm{i}"]["bias"], rtol=1e-4, atol=1e-4)


def test_odd_sizes_are_padded_bottom_right(timm_pair):
  _, params = timm_pair
  backbone = create_backbone("focalnet_tiny_lrf", execution=Execution(depthwise="xla"), **SHRUNK)
  variables = {"params": classifier_params(params)}
  x = np.random.default_rng(4).standard_normal((1, 70, 45, 3)).astype(np.float32)
  padded = np.zeros((1, 96, 64, 3), np.float32)
  padded[:, :70, :45] = x
  out, manual = backbone.apply(variables, x), backbone.apply(variables, padded)
  for ours, ref in zip(out, manual):
    np.testing.assert_array_equal(ours, ref)
  assert out.valid_sizes == ((18, 12), (9, 6), (5, 3), (3, 2))
  assert jax.jit(backbone.apply)(variables, x).valid_sizes == out.valid_sizes  # static through jit


def test_detection_settings_at_full_size():
  backbone = create_backbone("focalnet_tiny_lrf", detection=True, use_conv_embed=True, out_norms=True)
  x = jax.ShapeDtypeStruct((1, 800, 1216, 3), jnp.float32)
  shapes = jax.eval_shape(backbone.init, jax.random.key(0), x)["params"]
  modulation = shapes["layers_0"]["blocks_0"]["modulation"]
  assert [modulation[f"focal_layers_{l}"].shape[0] for l in range(3)] == [9, 11, 13]
  assert backbone.stem_geometry() == (7, 4, 3)
  out = jax.eval_shape(backbone.apply, {"params": shapes}, x)
  assert [m.shape for m in out] == [(1, 200, 304, 96), (1, 100, 152, 192), (1, 50, 76, 384), (1, 25, 38, 768)]


def test_invalid_out_indices_name_the_range():
  with pytest.raises(ValueError, match=r"in \[0, 4\)"):
    FocalNetBackbone(out_indices=(0, 4))
  with pytest.raises(ValueError, match="num_classes"):
    FocalNetBackbone(num_classes=10)
  assert FocalNetBackbone(out_indices=(-1, 1)).out_indices == (1, 3)


def test_classifier_initialises_a_detection_backbone_with_larger_windows(timm_pair):
  """Kernels 3, 5, 7 zero-padded to 9, 11, 13: the backbone computes the classifier's stage maps."""
  _, params = timm_pair
  classifier = create_backbone("focalnet_tiny_lrf", execution=Execution(depthwise="xla"), **SHRUNK)
  detection = create_backbone("focalnet_tiny_lrf", detection=True, out_norms=True, execution=Execution(depthwise="xla"), **SHRUNK)
  x = np.random.default_rng(5).standard_normal((1, 64, 96, 3)).astype(np.float32)
  fresh = detection.init(jax.random.key(0), x)["params"]
  adapted = weights.adapt_params(params, fresh)
  assert adapted["layers_0"]["blocks_0"]["modulation"]["focal_layers_2"].shape == (13, 13, 1, 16)
  identity_norms = {f"norm{i}": {"scale": np.ones(c, np.float32), "bias": np.zeros(c, np.float32)}
                    for i, c in enumerate((16, 32, 64, 128))}
  ours = detection.apply({"params": {**adapted, **identity_norms}}, x)
  expected = classifier.apply({"params": classifier_params(params)}, x)
  for a, b in zip(ours, expected):
    b = np.asarray(b, np.float64)
    b = (b - b.mean(-1, keepdims=True)) / np.sqrt(b.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_extra_focal_levels_get_zero_gates(timm_pair):
  _, params = timm_pair
  wider = create_backbone("focalnet_tiny_lrf", focal_levels=4, **SHRUNK)
  fresh = jax.eval_shape(wider.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  fresh = jax.tree.map(lambda s: np.full(s.shape, 7.0, np.float32), fresh)
  f_old = params["layers_0"]["blocks_0"]["modulation"]["f"]["kernel"]  # (16, 32 + 4)
  adapted = weights.adapt_params(params, fresh)
  f_new = adapted["layers_0"]["blocks_0"]["modulation"]["f"]["kernel"]  # (16, 32 + 5)
  np.testing.assert_array_equal(f_new[:, :35], f_old[:, :35])  # q, ctx, the three level gates
  np.testing.assert_array_equal(f_new[:, 35], 0.0)  # the new level's gate
  np.testing.assert_array_equal(f_new[:, 36], f_old[:, 35])  # the global-context gate, moved last
  assert (adapted["layers_0"]["blocks_0"]["modulation"]["focal_layers_3"] == 7.0).all()  # new level: target's init


@pytest.mark.parametrize("out_norms", [False, True])
def test_maps_come_out_in_norm_dtype_with_or_without_out_norms(out_norms):
  """The maps are the residual stream (or its per-output LayerNorm): float32 by default, bfloat16
  with bfloat16 norms; the parameters are the same either way."""
  backbone = create_backbone("focalnet_tiny_lrf", out_norms=out_norms, dtype=jnp.bfloat16, execution=Execution(depthwise="xla"),
                             **SHRUNK)
  narrow = backbone.clone(norm_dtype=jnp.bfloat16)
  x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  params = jax.eval_shape(backbone.init, jax.random.key(0), x)
  assert jax.eval_shape(narrow.init, jax.random.key(0), x) == params
  assert [m.dtype for m in jax.eval_shape(backbone.apply, params, x)] == [jnp.float32] * 4
  assert [m.dtype for m in jax.eval_shape(narrow.apply, params, x)] == [jnp.bfloat16] * 4
