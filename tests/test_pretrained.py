"""`from_pretrained`: every published source gives the PyTorch model's logits, and its preprocessing.

Each source is built from a random-weight timm or HF transformers model (every parameter
re-randomised), saved as its publisher saves it; nothing is downloaded. Relative error =
max|ours - torch| / max|torch|, below 1e-4 in float32.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import focalnet_jax
from focalnet_jax import evaluation
from test_convert import hf_model, images, randomize_, rel_err, timm_focalnet, timm_to_official, torch_logits
from torch_refs import import_timm, import_torch

torch = import_torch()
TOL = 1e-4
SIDE = 64
XLA = {"execution": focalnet_jax.Execution(depthwise="xla")}  # compiles fastest on CPU; the implementations are tested equal elsewhere


def ours(pretrained, x):
  model, variables = pretrained
  return np.asarray(model.apply(variables, x, train=False))


@pytest.fixture(scope="module")
def timm_tiny():
  timm = import_timm()
  return randomize_(timm.create_model("focalnet_tiny_srf", pretrained=False), 1)


def test_timm_safetensors_file(timm_tiny, tmp_path):
  from safetensors.torch import save_file

  save_file(timm_tiny.state_dict(), str(tmp_path / "weights.safetensors"))
  loaded = focalnet_jax.from_pretrained(tmp_path / "weights.safetensors", **XLA)
  x = images(SIDE)
  err = rel_err(ours(loaded, x), torch_logits(timm_tiny, x))
  print(f"timm .safetensors file: rel err {err:.2e}")
  assert err < TOL
  info = loaded.info
  assert (info.variant, info.layout, info.image_size, info.crop_ratio) == ("focalnet_tiny_srf", "timm", 224, 0.9)
  assert len(info.class_names) == 1000 and info.class_names[0] == "tench"


def test_timm_hub_snapshot_directory(timm_tiny, tmp_path):
  """timm's own `save_for_hf` (model.safetensors + config.json naming the architecture); the
  preprocessing comes from its pretrained_cfg."""
  from timm.models import save_for_hf

  save_for_hf(timm_tiny, str(tmp_path), safe_serialization=True)
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["architecture"] == "focalnet_tiny_srf" and config["pretrained_cfg"]["crop_pct"] == 0.9
  config["pretrained_cfg"].update(crop_pct=0.95, interpolation="bilinear")  # it must be read, not assumed
  (tmp_path / "config.json").write_text(json.dumps(config))
  loaded = focalnet_jax.from_pretrained(str(tmp_path), **XLA)
  x = images(SIDE, seed=1)
  err = rel_err(ours(loaded, x), torch_logits(timm_tiny, x))
  print(f"timm hub snapshot: rel err {err:.2e}")
  assert err < TOL
  assert loaded.info.transform == dict(image_size=224, crop_ratio=0.95, interpolation="bilinear",
                                       mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def test_hf_save_pretrained_directory(tmp_path):
  """transformers' save_pretrained; the class names come from id2label, the official eval crop."""
  names = {i: f"kind {i}" for i in range(10)}
  module = randomize_(hf_model(embed_dim=96, depths=[2, 2, 6, 2], focal_levels=[3] * 4, focal_windows=[3] * 4,
                               num_labels=10, id2label=names, label2id={v: k for k, v in names.items()},
                               image_size=224), 11)
  module.save_pretrained(str(tmp_path))
  loaded = focalnet_jax.from_pretrained(str(tmp_path), **XLA)
  x = images(SIDE, seed=2)
  err = rel_err(ours(loaded, x), torch_logits(module, x))
  print(f"HF save_pretrained: rel err {err:.2e}")
  assert err < TOL
  info = loaded.info
  assert (info.variant, info.layout, info.crop_ratio, info.overrides["num_classes"]) == (
      "focalnet_tiny_lrf", "hf", 0.875, 10)
  assert info.class_names == tuple(names.values())


def test_hf_config_sets_what_the_keys_cannot_show(tmp_path):
  """normalize_modulator has no parameters: only HF's config.json says it is on."""
  module = randomize_(hf_model(embed_dim=96, depths=[2, 2, 6, 2], focal_levels=[2] * 4, focal_windows=[3] * 4,
                               num_labels=1000, normalize_modulator=True), 12)
  module.save_pretrained(str(tmp_path))
  loaded = focalnet_jax.from_pretrained(str(tmp_path), **XLA)
  assert loaded.model.normalize_modulator
  x = images(SIDE, seed=3)
  assert rel_err(ours(loaded, x), torch_logits(module, x)) < TOL


def test_official_pth(timm_tiny, tmp_path):
  torch.save(timm_to_official(timm_tiny.state_dict()), str(tmp_path / "focalnet_tiny_srf.pth"))
  loaded = focalnet_jax.from_pretrained(str(tmp_path / "focalnet_tiny_srf.pth"), **XLA)
  x = images(SIDE, seed=4)
  err = rel_err(ours(loaded, x), torch_logits(timm_tiny, x))
  print(f"official .pth: rel err {err:.2e}")
  assert err < TOL
  assert (loaded.info.layout, loaded.info.crop_ratio, loaded.info.interpolation) == ("official", 0.875, "bicubic")


def test_variant_and_overrides_for_weights_no_variant_fits(tmp_path):
  from safetensors.torch import save_file

  module = randomize_(timm_focalnet(embed_dim=16, depths=(1, 1, 2, 1), num_classes=10, focal_levels=(2,) * 4,
                                    focal_windows=(3,) * 4), 5)
  save_file(module.state_dict(), str(tmp_path / "small.safetensors"))
  with pytest.raises(ValueError, match="fit no published FocalNet variant.*variant="):
    focalnet_jax.from_pretrained(tmp_path / "small.safetensors")
  loaded = focalnet_jax.from_pretrained(tmp_path / "small.safetensors", variant="focalnet_tiny_srf", embed_dim=16,
                                        depths=(1, 1, 2, 1), **XLA)
  x = images(SIDE, seed=5)
  assert rel_err(ours(loaded, x), torch_logits(module, x)) < TOL
  assert loaded.info.class_names == tuple(f"class_{i}" for i in range(10))


_HUB_SCRIPT = """
import sys, numpy as np, focalnet_jax
try:
  focalnet_jax.from_pretrained("timm/focalnet_base_srf.ms_in1k")
except FileNotFoundError as e:
  print("ERROR:", e)
loaded = focalnet_jax.from_pretrained("timm/focalnet_tiny_srf.ms_in1k", execution=focalnet_jax.Execution(depthwise="xla"))
model, variables = loaded
np.save(sys.argv[1], np.asarray(model.apply(variables, np.load(sys.argv[2]), train=False)))
print("CROP", loaded.info.crop_ratio, loaded.info.directory)
"""


def test_hub_id_from_an_offline_cache(timm_tiny, tmp_path):
  """A hub id, served from a huggingface_hub cache under HF_HOME with HF_HUB_OFFLINE=1 (in a fresh
  process: huggingface_hub reads them when imported); an uncached id names the download command."""
  from timm.models import save_for_hf

  revision = "0123456789abcdef0123456789abcdef01234567"
  repo = tmp_path / "hf_home" / "hub" / "models--timm--focalnet_tiny_srf.ms_in1k"
  save_for_hf(timm_tiny, str(repo / "snapshots" / revision), safe_serialization=True)
  (repo / "refs").mkdir()
  (repo / "refs" / "main").write_text(revision)
  x = images(SIDE, seed=6)
  np.save(tmp_path / "x.npy", x)
  env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
  env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1",
             PYTHONPATH=os.pathsep.join(filter(None, [os.getcwd(), env.get("PYTHONPATH")])))
  run = subprocess.run([sys.executable, "-c", _HUB_SCRIPT, str(tmp_path / "out.npy"), str(tmp_path / "x.npy")],
                       env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "hf download timm/focalnet_base_srf.ms_in1k config.json model.safetensors" in run.stdout
  assert "HF_HUB_OFFLINE is set" in run.stdout
  err = rel_err(np.load(tmp_path / "out.npy"), torch_logits(timm_tiny, x))
  print(f"hub id from the offline cache: rel err {err:.2e}")
  assert err < TOL
  assert "CROP 0.9" in run.stdout


def test_evaluation_loads_published_weights_with_their_preprocessing(timm_tiny, tmp_path):
  """What eval.py and visualize.py --checkpoint do with published weights."""
  from configs import default
  from safetensors.torch import save_file

  save_file(timm_tiny.state_dict(), str(tmp_path / "model.safetensors"))
  loaded = evaluation.as_pretrained(str(tmp_path / "model.safetensors"))
  assert loaded.info.variant == "focalnet_tiny_srf" and loaded.info.directory == str(tmp_path)
  config = evaluation.eval_config(default.get_config(), loaded.info)
  assert (config.image_size, config.crop_ratio, config.interpolation) == (224, 0.9, "bicubic")
  assert loaded.info.class_names[0] == "tench"
  with pytest.raises(ValueError, match="no steps and no EMA"):
    focalnet_jax.from_pretrained(str(tmp_path / "model.safetensors"), ema=True)


def test_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="No checkpoint, weight file or hub id"):
    focalnet_jax.from_pretrained(tmp_path / "missing.safetensors")
  assert not focalnet_jax.weights.is_hub_id("weights/model.safetensors")
  assert focalnet_jax.weights.is_hub_id("microsoft/focalnet-tiny")


def test_focalnet_jax_checkpoint_and_single_image_prediction(timm_tiny, tmp_path):
  """A converter-written checkpoint loads as the same weights; eval.py --image takes published weights."""
  from PIL import Image
  from configs import default
  from safetensors.torch import save_file

  from focalnet_jax.tools import convert

  save_file(timm_tiny.state_dict(), str(tmp_path / "model.safetensors"))
  convert.main(["--model", "focalnet_tiny_srf", "--checkpoint", str(tmp_path / "model.safetensors"),
                "--output", str(tmp_path / "converted")])
  from_file = focalnet_jax.from_pretrained(tmp_path / "model.safetensors", **XLA)
  from_ckpt = focalnet_jax.from_pretrained(tmp_path / "converted", **XLA)
  assert from_ckpt.info.layout == "focalnet_jax" and from_ckpt.info.variant == "focalnet_tiny_srf"
  x = images(SIDE, seed=7)
  np.testing.assert_array_equal(ours(from_ckpt, x), ours(from_file, x))

  path = str(tmp_path / "photo.jpg")
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(path)
  config = evaluation.eval_config(default.get_config(), from_file.info)
  (top,) = evaluation.predict_files(from_file, [path], config, k=1)
  logits = ours(from_file, from_file.info.load_images([path]))
  assert top[0][0] == from_file.info.class_names[int(logits[0].argmax())]
