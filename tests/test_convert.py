"""Weight conversion: logits of converted random PyTorch models match the originals.

Every case re-initialises the PyTorch model with non-trivial random values (layerscale
gammas, LayerNorm scales and biases included), so each parameter's mapping is exercised.
Relative error = max|ours - torch| / max|torch|, asserted below 1e-4 in float32.
"""
import functools
import re
import sys

import jax
import numpy as np
import pytest

from focalnet_jax import Execution, checkpoint, create_model, weights
from focalnet_jax.tools import convert
from torch_refs import import_timm, import_torch, import_transformers

torch = import_torch()
torch.set_num_threads(2)
TOL = 1e-4
SMALL = 64  # image side for most cases

# Shrunk layouts of the big variants: name, our overrides, timm FocalNet kwargs.
HUGE_SHRUNK = dict(embed_dim=16, depths=(1, 1, 2, 1), num_classes=10)
TIMM_HUGE_SHRUNK = dict(
    HUGE_SHRUNK, focal_levels=(3,) * 4, focal_windows=(3,) * 4, use_overlap_down=True,
    use_post_norm=True, use_post_norm_in_modulation=True, layerscale_value=1e-4,
)
LARGE_SHRUNK = dict(embed_dim=16, depths=(1, 1, 2, 1), num_classes=10)
TIMM_LARGE_SHRUNK = dict(
    LARGE_SHRUNK, focal_levels=(3,) * 4, focal_windows=(5,) * 4, use_overlap_down=True,
    use_post_norm=True, layerscale_value=1e-4,
)
TINY_ISO_SHRUNK = dict(depths=(4,))
BASE_ISO_SHRUNK = dict(embed_dim=64, depths=(3,))


def rel_err(ours, ref) -> float:
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  return float(np.abs(ours - ref).max() / np.abs(ref).max())


def randomize_(module, seed: int):
  """Random, well-scaled values for every parameter (defaults make gammas 1e-4 and LNs 1/0)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if "gamma" in name:
        p.copy_(0.5 + torch.rand(p.shape, generator=gen))
      elif p.ndim == 1 and name.endswith("weight"):  # LayerNorm scale
        p.copy_(1.0 + 0.2 * noise)
      elif p.ndim == 1:
        p.copy_(0.1 * noise)
      else:
        p.copy_(noise / np.sqrt(p[0].numel()))
  return module.eval()


def images(side: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal((2, side, side, 3)).astype(np.float32)


def torch_logits(module, x_nhwc: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    out = module(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2).copy()))
  return (out.logits if hasattr(out, "logits") else out).numpy()


@functools.lru_cache(maxsize=None)
def _jitted_apply(name: str, overrides: tuple):
  return jax.jit(create_model(name, **dict(overrides)).apply)


def jax_logits(name: str, overrides: dict, variables, x_nhwc: np.ndarray) -> np.ndarray:
  # The reference depthwise conv compiles several times faster on CPU than the default there
  # ('shift'); the two are tested against each other elsewhere, conversion is tested here.
  overrides = {"execution": Execution(depthwise="xla"), **overrides}
  key = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in overrides.items()))
  return np.asarray(_jitted_apply(name, key)(variables, x_nhwc))


def state_dict_np(module) -> dict:
  return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


# --- PyTorch reference models (built once per module) -----------------------------------------


def timm_focalnet(**kwargs):
  import_timm()  # registers what torchvision needs before timm imports it
  from timm.layers import LayerNorm2d
  from timm.models import focalnet as timm_focalnet_module

  stem_stride = kwargs.pop("stem_stride", None)
  model = timm_focalnet_module.FocalNet(**kwargs)
  if stem_stride:  # timm has no isotropic models; give its stem the 16x16 patchify of ours
    model.stem = timm_focalnet_module.Downsample(
        3, kwargs["embed_dim"], stride=stem_stride, norm_layer=functools.partial(LayerNorm2d, eps=1e-5)
    )
  return model


@pytest.fixture(scope="module")
def timm_models():
  timm = import_timm()
  return {
      "tiny_srf": randomize_(timm.create_model("focalnet_tiny_srf", pretrained=False), 1),
      "tiny_lrf": randomize_(timm.create_model("focalnet_tiny_lrf", pretrained=False), 2),
      "tiny_iso": randomize_(
          timm_focalnet(embed_dim=192, depths=(4,), focal_levels=(3,), focal_windows=(3,), stem_stride=16), 3
      ),
      "base_iso": randomize_(
          timm_focalnet(
              embed_dim=64, depths=(3,), focal_levels=(3,), focal_windows=(3,), stem_stride=16,
              layerscale_value=1e-4, use_post_norm_in_modulation=True,
          ),
          4,
      ),
      "huge": randomize_(timm_focalnet(**TIMM_HUGE_SHRUNK), 5),
      "large": randomize_(timm_focalnet(**TIMM_LARGE_SHRUNK), 6),
  }


TIMM_CASES = {  # key -> (our variant, overrides)
    "tiny_lrf": ("focalnet_tiny_lrf", {}),
    "tiny_iso": ("focalnet_tiny_iso", TINY_ISO_SHRUNK),
    "base_iso": ("focalnet_base_iso", BASE_ISO_SHRUNK),
    "huge": ("focalnet_huge_fl3", HUGE_SHRUNK),
    "large": ("focalnet_large_fl3", LARGE_SHRUNK),
}


# --- parity ---------------------------------------------------------------------------------


def test_timm_tiny_srf_at_224_and_at_another_size(timm_models):
  """The one full-resolution case; the same converted params also fit 256 px (no position state)."""
  module = timm_models["tiny_srf"]
  variables = weights.convert_state_dict(module.state_dict(), "focalnet_tiny_srf")
  for side in (224, 256):
    x = images(side)
    err = rel_err(jax_logits("focalnet_tiny_srf", {}, variables, x), torch_logits(module, x))
    print(f"timm tiny_srf @{side}: rel err {err:.2e}")
    assert err < TOL


@pytest.mark.parametrize("case", list(TIMM_CASES))
def test_timm_parity(timm_models, case):
  name, overrides = TIMM_CASES[case]
  module = timm_models[case]
  variables = weights.convert_state_dict(module.state_dict(), name, **overrides)
  x = images(SMALL)
  err = rel_err(jax_logits(name, overrides, variables, x), torch_logits(module, x))
  print(f"timm {case}: rel err {err:.2e}")
  assert err < TOL


def timm_to_official(state_dict: dict) -> dict:
  """The official microsoft/FocalNet layout, renamed from timm's independently of the converter."""
  out = {}
  for key, value in state_dict.items():
    m = re.match(r"layers\.(\d+)\.downsample\.(.+)", key)
    if m:  # official: downsample at the end of the previous stage
      key = f"layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}"
    key = re.sub(r"^stem\.", "patch_embed.", key)
    key = re.sub(r"\.ls([12])\.gamma$", r".gamma_\1", key)
    key = re.sub(r"\.norm([12])_post\.", r".norm\1.", key)
    key = key.replace(".modulation.norm.", ".modulation.ln.")
    key = re.sub(r"^head\.fc\.", "head.", key)
    if re.search(r"\.(modulation\.f|modulation\.proj|mlp\.fc1|mlp\.fc2)\.weight$", key):
      value = value[:, :, 0, 0]  # nn.Linear in the official code; `h` stays a 1x1 conv
    out[key] = value.clone()
  return {"model": out, "epoch": 299}


@pytest.mark.parametrize("case", ["huge", "base_iso", "tiny_lrf"])
def test_official_layout_parity(timm_models, case):
  name, overrides = TIMM_CASES[case]
  module = timm_models[case]
  official = timm_to_official(module.state_dict())
  assert weights.detect_layout(official["model"]) == ("official", "")
  variables = weights.convert_state_dict(official, name, **overrides)
  x = images(SMALL, seed=1)
  err = rel_err(jax_logits(name, overrides, variables, x), torch_logits(module, x))
  print(f"official {case}: rel err {err:.2e}")
  assert err < TOL


def hf_model(**config):
  transformers = import_transformers()
  base = dict(
      image_size=SMALL, patch_size=4, num_channels=3, hidden_act="gelu", layer_norm_eps=1e-5,
      hidden_dropout_prob=0.0, drop_path_rate=0.0, mlp_ratio=4.0, use_conv_embed=False,
      use_layerscale=False, use_post_layernorm=False, use_post_layernorm_in_modulation=False,
      normalize_modulator=False,
  )
  base.update(config)
  cfg = transformers.FocalNetConfig(**base)
  return transformers.FocalNetForImageClassification(cfg)


HF_CASES = {  # key -> (our variant, overrides, HF config)
    "tiny_srf": (
        "focalnet_tiny_srf", {},
        dict(embed_dim=96, depths=[2, 2, 6, 2], focal_levels=[2] * 4, focal_windows=[3] * 4, num_labels=1000),
    ),
    "tiny_lrf": (
        "focalnet_tiny_lrf", {},
        dict(embed_dim=96, depths=[2, 2, 6, 2], focal_levels=[3] * 4, focal_windows=[3] * 4, num_labels=1000),
    ),
    "huge": (
        "focalnet_huge_fl3", HUGE_SHRUNK,
        dict(
            embed_dim=16, depths=[1, 1, 2, 1], focal_levels=[3] * 4, focal_windows=[3] * 4, num_labels=10,
            use_conv_embed=True, use_layerscale=True, use_post_layernorm=True,
            use_post_layernorm_in_modulation=True,
        ),
    ),
}


@pytest.mark.parametrize("case", list(HF_CASES))
def test_hf_parity(case):
  name, overrides, config = HF_CASES[case]
  module = randomize_(hf_model(**config), 10 + list(HF_CASES).index(case))
  state_dict = module.state_dict()
  variables = weights.convert_state_dict(state_dict, name, **overrides)
  x = images(SMALL, seed=2)
  err = rel_err(jax_logits(name, overrides, variables, x), torch_logits(module, x))
  print(f"hf {case}: rel err {err:.2e}")
  assert err < TOL
  # The bare FocalNetModel (no 'focalnet.' prefix, no classifier) converts to the same backbone.
  bare = {k[len("focalnet."):]: v for k, v in state_dict.items() if k.startswith("focalnet.")}
  assert weights.detect_layout(bare) == ("hf", "")
  backbone = weights.convert_state_dict(bare, name, **{**overrides, "num_classes": 0})
  expected = {k: v for k, v in variables["params"].items() if k != "head"}
  jax.tree.map(np.testing.assert_array_equal, backbone["params"], expected)


# --- the CLI ----------------------------------------------------------------------------------


def cli_args(src, out, *extra):
  overrides = ["--override", "embed_dim=16", "--override", "depths=[1,1,2,1]", "--override", "num_classes=10"]
  return ["--model", "focalnet_huge_fl3", "--checkpoint", str(src), "--output", str(out), *overrides, *extra]


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_cli_end_to_end(timm_models, tmp_path, fmt, capsys):
  module = timm_models["huge"]
  src = tmp_path / f"weights.{fmt}"
  if fmt == "safetensors":
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(src))
  else:
    torch.save({"model": module.state_dict(), "epoch": 3}, src)
  out = tmp_path / "converted"
  assert convert.main(cli_args(src, out)) == 0
  assert "timm layout" in capsys.readouterr().out

  params, meta = checkpoint.load_params(out)
  assert meta["model"] == "focalnet_huge_fl3"
  assert meta["source"]["layout"] == "timm" and meta["source"]["path"] == str(src)
  assert meta["model_overrides"] == {"embed_dim": 16, "depths": [1, 1, 2, 1], "num_classes": 10}
  x = images(SMALL, seed=3)
  ours = jax_logits(meta["model"], meta["model_overrides"], {"params": params}, x)  # = create_model(...)
  assert rel_err(ours, torch_logits(module, x)) < TOL


def test_cli_refuses_to_overwrite(timm_models, tmp_path):
  src = tmp_path / "weights.safetensors"
  from safetensors.torch import save_file

  save_file({k: v.contiguous() for k, v in timm_models["huge"].state_dict().items()}, str(src))
  out = tmp_path / "existing"
  out.mkdir()
  (out / "keep.txt").write_text("precious")
  with pytest.raises(SystemExit, match="refusing to overwrite"):
    convert.main(cli_args(src, out))
  assert (out / "keep.txt").read_text() == "precious"
  assert convert.main(cli_args(src, out, "--force")) == 0
  assert not (out / "keep.txt").exists()
  assert checkpoint.read_meta(out)["model"] == "focalnet_huge_fl3"


def test_cli_reports_conversion_errors(timm_models, tmp_path):
  src = tmp_path / "weights.pth"
  torch.save(timm_models["huge"].state_dict(), src)
  args = ["--model", "focalnet_huge_fl3", "--checkpoint", str(src), "--override", "embed_dim=16",
          "--override", "depths=[1,1,2,1]"]  # num_classes left at 21842: the head does not fit
  with pytest.raises(SystemExit, match="num_classes=10"):
    convert.main([*args, "--output", str(tmp_path / "o")])
  assert not (tmp_path / "o").exists()
  # --force replaces an existing checkpoint only once the conversion has succeeded.
  existing = tmp_path / "existing"
  existing.mkdir()
  (existing / "keep.txt").write_text("precious")
  with pytest.raises(SystemExit, match="num_classes=10"):
    convert.main([*args, "--output", str(existing), "--force"])
  assert (existing / "keep.txt").read_text() == "precious"


def test_cli_rejects_bad_overrides_before_reading(tmp_path, capsys):
  # The shared --override syntax: a value the field cannot take is an error, never a string.
  base = ["--model", "focalnet_tiny_srf", "--checkpoint", str(tmp_path / "absent.pth"),
          "--output", str(tmp_path / "o")]
  for override, message in [("use_gating=maybe", "use_gating takes true or false"),
                            ("depths=3x", "depths takes a list of ints"),
                            ("num_class=10", "Unknown FocalNet field 'num_class'")]:
    with pytest.raises(SystemExit) as e:
      convert.main([*base, "--override", override])
    assert e.value.code == 2 and message in capsys.readouterr().err


# --- the layout tables ------------------------------------------------------------------------


def test_every_layout_names_each_parameter_once_and_is_detected():
  import jax.numpy as jnp
  from flax import traverse_util

  # Every optional part: conv stem, layerscale, post-norms, modulation LayerNorm, a head.
  model = create_model("focalnet_huge_fl3", **HUGE_SHRUNK)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  paths = list(traverse_util.flatten_dict(shapes["params"]))
  for name, table in weights.LAYOUTS.items():
    for prefix in table.prefixes:
      keys = [weights.torch_key(p, name, postln=True, prefix=prefix) for p in paths]
      assert len(set(keys)) == len(keys), name
      assert weights.detect_layout(keys) == (name, prefix)
      arch = weights.infer_architecture(dict.fromkeys(keys, np.zeros((16, 3, 7, 7))), name, prefix)
      assert arch["depths"] == (1, 1, 2, 1) and arch["use_layerscale"]
      assert arch["use_postln_in_modulation"] and arch.get("use_postln", True)


# --- errors and head handling -----------------------------------------------------------------


def test_wrong_variant_names_key_shapes_and_the_right_variant(timm_models):
  state_dict = state_dict_np(timm_models["tiny_srf"])
  with pytest.raises(ValueError) as e:
    weights.convert_state_dict(state_dict, "focalnet_base_srf")
  msg = str(e.value)
  assert "'stem.proj.weight': checkpoint has (96, 3, 4, 4), the model expects (128, 3, 4, 4)" in msg
  assert "looks like focalnet_tiny_srf" in msg
  with pytest.raises(ValueError, match="looks like focalnet_tiny_srf"):  # fewer focal levels
    weights.convert_state_dict(state_dict, "focalnet_tiny_lrf")


def test_missing_and_unexpected_keys_are_listed(timm_models):
  name, overrides = TIMM_CASES["huge"]
  state_dict = state_dict_np(timm_models["huge"])
  del state_dict["layers.2.blocks.1.modulation.h.weight"]
  state_dict["layers.0.blocks.0.extra.weight"] = np.zeros(3, np.float32)
  with pytest.raises(ValueError) as e:
    weights.convert_state_dict(state_dict, name, **overrides)
  msg = str(e.value)
  assert "missing from the checkpoint (1):" in msg and "layers.2.blocks.1.modulation.h.weight" in msg
  assert "unexpected in the checkpoint (1):" in msg and "layers.0.blocks.0.extra.weight" in msg
  # Architecture read off the keys: the post-norms of a timm checkpoint name the fix.
  with pytest.raises(ValueError, match=r"use_postln=True \(model: False\).*--override use_postln=true"):
    weights.convert_state_dict(state_dict_np(timm_models["huge"]), name, use_postln=False, **overrides)


def test_unknown_layout_names_prefixes():
  with pytest.raises(ValueError, match=r"Unknown checkpoint layout.*'backbone'"):
    weights.convert_state_dict({"backbone.conv.weight": np.zeros((2, 2))}, "focalnet_tiny_srf")


def test_head_mismatch_explains_the_options(timm_models):
  name, overrides = TIMM_CASES["huge"]
  with pytest.raises(ValueError) as e:
    weights.convert_state_dict(state_dict_np(timm_models["huge"]), name, **{**overrides, "num_classes": 7})
  msg = str(e.value)
  assert "'head.fc.weight': checkpoint has (10, 128), the model expects (7, 128)" in msg
  assert "num_classes=10" in msg and "drop_head=True" in msg


def test_drop_head(timm_models):
  name, overrides = TIMM_CASES["huge"]
  state_dict = state_dict_np(timm_models["huge"])
  full = weights.convert_state_dict(state_dict, name, **overrides)["params"]
  # A new 5-class head, freshly initialised; every other parameter is the checkpoint's.
  five = {**overrides, "num_classes": 5}
  new = weights.convert_state_dict(state_dict, name, drop_head=True, **five)["params"]
  assert new["head"]["kernel"].shape == (128, 5) and 0.005 < new["head"]["kernel"].std() < 0.05
  np.testing.assert_array_equal(new["head"]["bias"], 0.0)
  jax.tree.map(np.testing.assert_array_equal, {k: v for k, v in new.items() if k != "head"},
               {k: v for k, v in full.items() if k != "head"})
  # A headless model: the checkpoint's head is an error unless dropped.
  with pytest.raises(ValueError, match="drop_head"):
    weights.convert_state_dict(state_dict, name, **{**overrides, "num_classes": 0})
  headless = weights.convert_state_dict(state_dict, name, drop_head=True, **{**overrides, "num_classes": 0})
  assert "head" not in headless["params"]


def test_cut_22k_head_to_1k():
  name, overrides = "focalnet_large_fl3", {**LARGE_SHRUNK, "num_classes": 21842}
  module = randomize_(timm_focalnet(**{**TIMM_LARGE_SHRUNK, "num_classes": 21842}), 7)
  state_dict = state_dict_np(module)
  one_k = {**overrides, "num_classes": 1000}
  with pytest.raises(ValueError) as e:
    weights.convert_state_dict(state_dict, name, **one_k)
  assert "head_to_1k=True" in str(e.value) and "num_classes=21842" in str(e.value)
  variables = weights.convert_state_dict(state_dict, name, head_to_1k=True, **one_k)
  x = images(SMALL, seed=4)
  ref = torch_logits(module, x)[:, :1000]
  err = rel_err(jax_logits(name, one_k, variables, x), ref)
  print(f"22k->1k head cut: rel err {err:.2e}")
  assert err < TOL
  with pytest.raises(ValueError, match="head_to_1k cuts a 21842-class"):  # only 22K -> 1K
    weights.convert_state_dict(state_dict, name, head_to_1k=True, **{**overrides, "num_classes": 500})


def test_numpy_and_safetensors_need_no_torch(timm_models, tmp_path, monkeypatch):
  from safetensors.numpy import save_file

  name, overrides = TIMM_CASES["huge"]
  state_dict = state_dict_np(timm_models["huge"])
  save_file(state_dict, str(tmp_path / "w.safetensors"))
  torch.save(timm_models["huge"].state_dict(), tmp_path / "w.pth")
  from safetensors.torch import save_file as save_torch

  bf16 = {k: v.to(torch.bfloat16) for k, v in timm_models["huge"].state_dict().items()}
  save_torch(bf16, str(tmp_path / "w_bf16.safetensors"))
  expected = weights.convert_state_dict(state_dict, name, **overrides)
  monkeypatch.setitem(sys.modules, "torch", None)  # any `import torch` now fails
  loaded = weights.load_checkpoint(tmp_path / "w.safetensors")
  got = weights.convert_state_dict(loaded, name, **overrides)
  jax.tree.map(np.testing.assert_array_equal, got, expected)
  snapshot = tmp_path / "snapshot"  # a downloaded HF hub directory
  snapshot.mkdir()
  (tmp_path / "w.safetensors").rename(snapshot / "model.safetensors")
  assert weights.load_checkpoint(snapshot).keys() == loaded.keys()
  # bfloat16 files (which numpy cannot read) come back as float32.
  loaded = weights.load_checkpoint(tmp_path / "w_bf16.safetensors")
  key = "layers.0.blocks.0.modulation.f.weight"
  assert loaded[key].dtype == np.float32
  np.testing.assert_allclose(loaded[key], state_dict[key], rtol=1e-2, atol=1e-6)
  assert not np.array_equal(loaded[key], state_dict[key])
  with pytest.raises(ImportError, match="needs PyTorch.*safetensors"):
    weights.load_checkpoint(tmp_path / "w.pth")
