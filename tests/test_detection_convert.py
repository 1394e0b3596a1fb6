"""Converting detection backbones: an official mmdet detection checkpoint (built from a random
classifier by the official renaming: head and final norm dropped, `backbone.` prefix, norm0..3)
and HF's FocalNetBackbone weights, into `FocalNetBackbone` params; the outputs equal the
references (timm `features_only` maps with the norms applied; HF's feature maps)."""
import re

import numpy as np
import pytest

from focalnet_jax import checkpoint, weights
from focalnet_jax.tools import convert
from focalnet_jax.model import Execution
from focalnet_jax.model.backbone import backbone_from_meta, create_backbone
from test_convert import hf_model, randomize_, rel_err, timm_to_official
from torch_refs import import_timm, import_torch, import_transformers

torch = import_torch()
TOL = 1e-4
SHRUNK = dict(embed_dim=16, depths=(1, 1, 2, 1))
# A tiny-lrf detection backbone, shrunk: three levels at focal window 9 (kernels 9, 11, 13).
TIMM_DETECTION = dict(embed_dim=16, depths=(1, 1, 2, 1), focal_levels=(3,) * 4, focal_windows=(9,) * 4)
WIDTHS = (16, 32, 64, 128)


def nchw(x: np.ndarray):
  return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def nhwc(t) -> np.ndarray:
  return t.detach().numpy().transpose(0, 2, 3, 1)


def layer_norm(x: np.ndarray, scale: np.ndarray, bias: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * scale + bias


@pytest.fixture(scope="module")
def detector():
  """(timm classifier, mmdet-style checkpoint {'state_dict': ...}, the norms' (scale, bias))."""
  timm = import_timm()
  classifier = randomize_(timm.models.focalnet._create_focalnet("focalnet_tiny_lrf", num_classes=5, **TIMM_DETECTION), 7)
  official = timm_to_official(classifier.state_dict())["model"]
  gen = torch.Generator().manual_seed(8)
  norms = {i: (1 + 0.2 * torch.randn(c, generator=gen), 0.1 * torch.randn(c, generator=gen)) for i, c in enumerate(WIDTHS)}
  # The official detection backbone: no head, no final norm, a LayerNorm per output, under `backbone.`.
  backbone = {f"backbone.{k}": v for k, v in official.items() if not re.match(r"(head|norm)\.", k)}
  for i, (scale, bias) in norms.items():
    backbone[f"backbone.norm{i}.weight"], backbone[f"backbone.norm{i}.bias"] = scale, bias
  others = {"neck.lateral_convs.0.conv.weight": torch.zeros(32, 16, 1, 1), "neck.fpn_convs.0.conv.bias": torch.zeros(32),
            "rpn_head.rpn_conv.weight": torch.zeros(32, 32, 3, 3), "roi_head.bbox_head.fc_cls.weight": torch.zeros(81, 64)}
  mmdet = {"meta": {"epoch": 12}, "state_dict": {**backbone, **others}}
  return classifier, mmdet, {i: (s.numpy(), b.numpy()) for i, (s, b) in norms.items()}


def reference_maps(classifier, out_indices, x, norms):
  """timm's features_only maps of the classifier, with the detection norms applied."""
  timm = import_timm()
  features = timm.models.focalnet._create_focalnet("focalnet_tiny_lrf", features_only=True, out_indices=out_indices,
                                                   **TIMM_DETECTION).eval()
  renamed = {re.sub(r"^layers\.(\d+)\.", r"layers_\1.", k): v for k, v in classifier.state_dict().items()}
  features.load_state_dict({k: v for k, v in renamed.items() if k in features.state_dict()})
  with torch.no_grad():
    maps = [nhwc(t) for t in features(nchw(x))]
  return [layer_norm(m, *norms[i]) for i, m in zip(out_indices, maps)]


@pytest.mark.parametrize("out_indices", [(0, 1, 2, 3), (1, 2, 3)])
def test_mmdet_detection_checkpoint_converts_and_runs(detector, out_indices):
  classifier, mmdet, norms = detector
  variables = weights.convert_state_dict(mmdet, "focalnet_tiny_lrf", backbone=True, detection=True,
                                         out_indices=out_indices, **SHRUNK)
  assert {f"norm{i}" for i in out_indices} <= set(variables["params"])  # out_norms found in the checkpoint
  assert not {"norm", "head"} & set(variables["params"])
  backbone = create_backbone("focalnet_tiny_lrf", detection=True, out_indices=out_indices, out_norms=True,
                             execution=Execution(depthwise="xla"), **SHRUNK)
  x = np.random.default_rng(0).standard_normal((2, 64, 96, 3)).astype(np.float32)
  out = backbone.apply(variables, x)
  for ours, ref in zip(out, reference_maps(classifier, out_indices, x, norms), strict=True):
    err = rel_err(ours, ref)
    print(f"mmdet backbone out_indices={out_indices}: rel err {err:.2e}")
    assert ours.shape == ref.shape and err < TOL
  settings, dropped = weights.backbone_conversion(mmdet, "focalnet_tiny_lrf", detection=True, out_indices=out_indices,
                                                  **SHRUNK)
  assert settings == {"out_indices": list(out_indices), "out_norms": True, "detection": True}
  assert {"outside the backbone: neck", "outside the backbone: rpn_head", "outside the backbone: roi_head"} <= set(dropped)
  assert dropped.get("output norms not selected", []) == ([] if 0 in out_indices else ["backbone.norm0.bias",
                                                                                      "backbone.norm0.weight"])


def test_detection_checkpoint_without_detection_settings_says_so(detector):
  _, mmdet, _ = detector
  with pytest.raises(ValueError) as e:
    weights.convert_state_dict(mmdet, "focalnet_tiny_lrf", backbone=True, **SHRUNK)
  msg = str(e.value)
  assert "under 'backbone.'" in msg and "a backbone of focalnet_tiny_lrf" in msg
  assert "the detection backbone of focalnet_tiny_lrf" in msg and "--detection" in msg


def test_classifier_into_a_backbone_with_norms_explains(detector):
  classifier, _, _ = detector
  with pytest.raises(ValueError) as e:
    weights.convert_state_dict(classifier.state_dict(), "focalnet_tiny_lrf", backbone=True, detection=True,
                               out_norms=True, **SHRUNK)
  assert "no per-output norms" in str(e.value) and "--no-out-norms" in str(e.value)
  # Without out_norms the classifier converts; its head and final norm are dropped.
  _, dropped = weights.backbone_conversion(classifier.state_dict(), "focalnet_tiny_lrf", detection=True, **SHRUNK)
  assert set(dropped) == {"the classifier's head", "the classifier's final norm"}


def test_cli_writes_a_backbone_checkpoint_that_rebuilds(detector, tmp_path, capsys):
  classifier, mmdet, norms = detector
  src, out = tmp_path / "mask_rcnn_focalnet.pth", tmp_path / "backbone"
  torch.save(mmdet, src)
  overrides = ["--override", "embed_dim=16", "--override", "depths=[1,1,2,1]"]
  assert convert.main(["--model", "focalnet_tiny_lrf", "--checkpoint", str(src), "--output", str(out),
                       "--backbone", "--detection", "--out-indices", "1,3", *overrides]) == 0
  printed = capsys.readouterr().out
  assert "Dropped outside the backbone: neck (2 keys)" in printed and "output norms not selected (4 keys)" in printed
  meta = checkpoint.read_meta(out)
  assert meta["backbone"] == {"out_indices": [1, 3], "out_norms": True, "detection": True}
  assert meta["model_overrides"]["num_classes"] == 0
  params, _ = checkpoint.load_params(out)
  backbone = backbone_from_meta(meta, execution=Execution(depthwise="xla"))
  x = np.random.default_rng(1).standard_normal((1, 64, 64, 3)).astype(np.float32)
  for ours, ref in zip(backbone.apply({"params": params}, x), reference_maps(classifier, (1, 3), x, norms), strict=True):
    assert rel_err(ours, ref) < TOL


def test_cli_backbone_options_need_backbone(tmp_path, capsys):
  with pytest.raises(SystemExit, match="add --backbone"):
    convert.main(["--model", "focalnet_tiny_lrf", "--checkpoint", "x.pth", "--output", str(tmp_path / "o"),
                  "--out-indices", "1,2"])


def hf_style_maps(module, images):
  """HF FocalNetBackbone's maps from our modules: 'stem' is the embedding, 'stage{i}' (i < 4) the
  input of our stage i (stage i - 1 after its downsample), 'stage4' our last stage's output."""
  x = module.embed(images)
  maps = [x]
  for i in range(4):
    feats, x = module.run_stage(x, i)
    maps.append(x if i < 3 else feats)
  return maps


def test_hf_backbone_weights_give_hf_feature_maps():
  transformers = import_transformers()
  hf_config = dict(embed_dim=16, depths=[1, 1, 2, 1], focal_levels=[3] * 4, focal_windows=[3] * 4)
  config = hf_model(**hf_config).config
  config.out_features = ["stem", "stage1", "stage2", "stage3", "stage4"]
  config.hidden_sizes = list(config.hidden_sizes)  # FocalNetBackbone concatenates it to a list
  hf_backbone = randomize_(transformers.FocalNetBackbone(config), 9)
  state_dict = hf_backbone.state_dict()
  variables = weights.convert_state_dict(state_dict, "focalnet_tiny_lrf", backbone=True, **SHRUNK)
  _, dropped = weights.backbone_conversion(state_dict, "focalnet_tiny_lrf", **SHRUNK)
  assert dropped == {"the classifier's final norm": ["focalnet.layernorm.bias", "focalnet.layernorm.weight"]}
  backbone = create_backbone("focalnet_tiny_lrf", execution=Execution(depthwise="xla"), **SHRUNK)
  x = np.random.default_rng(2).standard_normal((2, 64, 96, 3)).astype(np.float32)
  with torch.no_grad():
    reference = [nhwc(t) for t in hf_backbone(nchw(x)).feature_maps]
  ours = backbone.apply(variables, x, method=hf_style_maps)
  errors = [rel_err(a, b) for a, b in zip(ours, reference, strict=True)]
  print("HF FocalNetBackbone stem, stage1..4: rel err " + ", ".join(f"{e:.2e}" for e in errors))
  assert max(errors) < TOL
  np.testing.assert_array_equal(backbone.apply(variables, x)[3], ours[4])  # stage4 is our last output
