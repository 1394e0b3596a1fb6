"""The converter never loses an output and names a broken weight file as one: `--force` writes
beside the old output and swaps only once complete; truncated or empty files are reported as
incomplete downloads (never as a reason to pass --trust-pickle)."""
from __future__ import annotations

import os

import numpy as np
import pytest

from focalnet_jax import checkpoint
from focalnet_jax.tools import convert

NAME = "focalnet_tiny_srf"
SMALL = {"embed_dim": 8, "depths": (1, 1, 1, 1), "num_classes": 3}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  """A small timm-layout .safetensors and .pth of the same random weights."""
  torch = pytest.importorskip("torch")
  from safetensors.torch import save_file
  from torch_refs import import_timm

  import_timm()  # registers what torchvision needs before timm imports it
  from timm.models import focalnet

  model = focalnet.FocalNet(embed_dim=8, depths=(1, 1, 1, 1), num_classes=3, focal_levels=(2, 2, 2, 2),
                            focal_windows=(3, 3, 3, 3))
  root = tmp_path_factory.mktemp("weights")
  sd = {k: v.contiguous() for k, v in model.state_dict().items()}
  save_file(sd, str(root / "w.safetensors"))
  torch.save(sd, root / "w.pth")
  return root


def _args(src, out, *extra):
  over = [a for k, v in SMALL.items() for a in ("--override", f"{k}={list(v) if isinstance(v, tuple) else v}")]
  return ["--model", NAME, "--checkpoint", str(src), "--output", str(out), *over, *extra]


def test_force_writes_beside_and_swaps_so_a_failed_write_keeps_the_old_output(weights, tmp_path, monkeypatch):
  out = tmp_path / "out"
  assert convert.main(_args(weights / "w.safetensors", out)) == 0
  before = sorted(os.listdir(out))
  save = checkpoint.save

  def disk_full(path, *args, **kwargs):
    save(path, *args, **kwargs)  # part of the new output is on disk when the disk fills up
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(checkpoint, "save", disk_full)
  with pytest.raises(SystemExit, match=r"Writing .*out failed \(OSError: \[Errno 28\] No space left on device; "
                                       r"free disk space and rerun\); the existing .*out is intact"):
    convert.main(_args(weights / "w.safetensors", out, "--force"))
  monkeypatch.undo()
  assert sorted(os.listdir(out)) == before and sorted(os.listdir(tmp_path)) == ["out"]  # nothing left beside
  assert checkpoint.read_meta(out)["model"] == NAME
  # A file in the way is replaced too, and only after the new output is complete.
  (tmp_path / "file").write_text("x")
  assert convert.main(_args(weights / "w.pth", tmp_path / "file", "--force")) == 0
  assert sorted(os.listdir(tmp_path)) == ["file", "out"]
  assert np.isfinite(checkpoint.load_params(tmp_path / "file")[0]["head"]["kernel"]).all()


@pytest.mark.parametrize("name,keep", [("w.safetensors", 0), ("w.safetensors", 5), ("w.safetensors", 0.5),
                                       ("w.pth", 0), ("w.pth", 0.5), ("w.pth", 0.99)])
def test_truncated_or_empty_weight_files_are_incomplete_downloads(weights, tmp_path, name, keep):
  data = (weights / name).read_bytes()
  cut = tmp_path / name
  cut.write_bytes(data[:int(len(data) * keep) if isinstance(keep, float) else keep])
  with pytest.raises(SystemExit) as e:
    convert.main(_args(cut, tmp_path / "out"))
  message = str(e.value)
  assert f"'{cut}' is incomplete or damaged" in message or f"Could not read '{cut}'" in message, message
  assert "download it again" in message.lower() and "trust" not in message.lower()
  assert not (tmp_path / "out").exists()


def test_weights_with_nan_are_refused_by_convert_and_from_pretrained(weights, tmp_path):
  from safetensors.numpy import load_file, save_file

  import focalnet_jax

  sd = load_file(str(weights / "w.safetensors"))
  sd["layers.0.blocks.0.mlp.fc1.weight"][0, :3] = np.nan
  save_file(sd, str(tmp_path / "nan.safetensors"))
  with pytest.raises(SystemExit, match=r"nan.safetensors' holds non-finite weights \(NaN or inf\) in 1 array\(s\): "
                                       r"params/layers_0/blocks_0/mlp/fc1/kernel \(3 of \d+\)\..*download or convert it again"):
    convert.main(_args(tmp_path / "nan.safetensors", tmp_path / "out"))
  assert not (tmp_path / "out").exists()
  with pytest.raises(ValueError, match="holds non-finite weights"):
    focalnet_jax.from_pretrained(tmp_path / "nan.safetensors", variant=NAME, **SMALL)


def test_a_web_page_or_a_misnamed_file_is_named_for_what_it_is(weights, tmp_path):
  html = tmp_path / "model.pth"
  html.write_text("<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>...</body></html>\n")
  with pytest.raises(SystemExit) as e:
    convert.main(_args(html, tmp_path / "out"))
  assert "is a web page (HTML), not a weight file" in str(e.value) and "trust" not in str(e.value).lower()
  lfs = tmp_path / "pytorch_model.bin"
  lfs.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 1234\n")
  with pytest.raises(SystemExit, match="is a Git LFS pointer .*git lfs pull"):
    convert.main(_args(lfs, tmp_path / "out"))
  misnamed = tmp_path / "really_safetensors.pth"  # safetensors saved under a .pth name: read as what it is
  misnamed.write_bytes((weights / "w.safetensors").read_bytes())
  assert convert.main(_args(misnamed, tmp_path / "out")) == 0
  assert not (tmp_path / "other").exists()
