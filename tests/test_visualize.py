"""Seeing inside: the exposed modulator and gates are the paper's quantities, pictures are written."""
import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from scipy.special import erf

from focalnet_jax import checkpoint
from focalnet_jax.model import variants
from focalnet_jax.tools import visualize as viz
from focalnet_jax.train import runlog

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(embed_dim=16, depths=(1, 2), num_classes=10, focal_levels=(2, 3), drop_path_rate=0.0)
SIZE = 32  # patch 4, two stages: 8x8 and 4x4 tokens


def tiny(**overrides):
  return _tiny(tuple(sorted(overrides.items())))


@functools.cache  # one set of params per architecture keeps the file fast
def _tiny(overrides):
  kw = {**TINY, **dict(overrides)}
  model = variants.create_model("focalnet_tiny_srf", **kw)
  # Random params from numpy on the traced shapes: no initialiser compile (seconds on a busy CPU),
  # and non-trivial LayerNorm affines and biases, so a hand computation ignoring them would fail.
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, SIZE, SIZE, 3)))["params"]
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    name = path[-1].key
    noise = rng.standard_normal(leaf.shape).astype(np.float32)
    if name == "scale":
      return 1.0 + 0.1 * noise
    if len(leaf.shape) == 1:
      return 0.1 * noise
    return noise / np.sqrt(np.prod(leaf.shape[:-1]))

  return model, jax.tree_util.tree_map_with_path(fill, shapes), kw


def images(n=2):
  return np.random.default_rng(2).standard_normal((n, SIZE, SIZE, 3)).astype(np.float32)


# --- focal modulation by hand, in numpy (paper Sec. 3.2; docs/model.md, 'Focal modulation') ---


def gelu(x):
  return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def layer_norm(x, p):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-5) * np.asarray(p["scale"]) + np.asarray(p["bias"])


def dense(x, p):
  return x @ np.asarray(p["kernel"]) + np.asarray(p["bias"])


def depthwise(x, kernel):
  """Cross-correlation with a (k, k, 1, C) kernel, zero padding k // 2 (stride 1)."""
  k = kernel.shape[0]
  pad = k // 2
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  out = np.zeros_like(x)
  h, w = x.shape[1:3]
  for i in range(k):
    for j in range(k):
      out += xp[:, i:i + h, j:j + w, :] * kernel[i, j, 0]
  return out


def hand_modulation(x, p, levels):
  """(modulator M, gates G) of focal modulation, docs/model.md 'Focal modulation' steps 1-5: the
  fused projection f to q, Z^0 and G; Z^l = GELU(DWConv_l(Z^{l-1})); the global context
  Z^{L+1} = GELU(mean of Z^L); Z^out = sum of G^l * Z^l; M = h(Z^out)."""
  c = x.shape[-1]
  proj = dense(x, p["f"])
  q, ctx, gates = proj[..., :c], proj[..., c:2 * c], proj[..., 2 * c:]
  assert q.shape == ctx.shape and gates.shape[-1] == levels + 1
  ctx_all = np.zeros_like(ctx)
  for l in range(levels):
    ctx = gelu(depthwise(ctx, np.asarray(p[f"focal_layers_{l}"])))
    ctx_all += ctx * gates[..., l:l + 1]
  ctx_global = gelu(ctx.mean(axis=(1, 2), keepdims=True))
  ctx_all += ctx_global * gates[..., levels:levels + 1]
  return dense(ctx_all, p["h"]), gates


def test_sown_modulator_and_gates_equal_hand_computation():
  model, params, _ = tiny()
  x = np.asarray(images(), np.float64)
  _, inter = viz.modulation_intermediates(model, params, x.astype(np.float32))
  # Stage 0, block 0: its input is the patch embedding (conv kernel = stride = 4, then LayerNorm).
  pe = params["patch_embed"]
  b, s = x.shape[0], SIZE // 4
  patches = x.reshape(b, s, 4, s, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(b, s, s, 48)
  embedded = patches @ np.asarray(pe["proj"]["kernel"]).reshape(48, -1) + np.asarray(pe["proj"]["bias"])
  tokens = layer_norm(embedded, pe["norm"])
  block = params["layers_0"]["blocks_0"]
  modulator, gates = hand_modulation(layer_norm(tokens, block["norm1"]), block["modulation"], levels=2)
  np.testing.assert_allclose(inter[0][0]["modulator"], modulator, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(inter[0][0]["gates"], gates, rtol=1e-4, atol=1e-4)
  # The map drawn is the per-location L2 norm over channels.
  np.testing.assert_allclose(viz.modulator_norm(inter[0]), np.linalg.norm(modulator, axis=-1), rtol=1e-4)


@pytest.mark.parametrize("overrides, gate_channels", [
    ({}, (3, 4)),  # focal_levels (2, 3) + the global level
    ({"use_global_context": False}, (2, 3)),
    ({"use_gating": False}, None),
])
def test_intermediates_shapes_and_logits_unchanged(overrides, gate_channels):
  model, params, kw = tiny(**overrides)
  x = images()
  logits, inter = viz.modulation_intermediates(model, params, x)
  if not overrides:  # one compile more; the sown values never feed back into the output
    plain = jax.jit(functools.partial(model.apply, train=False))({"params": params}, x)
    np.testing.assert_array_equal(np.asarray(logits), np.asarray(plain))
  assert sorted(inter) == [0, 1]
  for stage, (depth, side, width) in enumerate(zip(kw["depths"], (8, 4), (16, 32))):
    assert len(inter[stage]) == depth
    for block in inter[stage]:
      assert block["modulator"].shape == (2, side, side, width)
      if gate_channels is None:
        assert block["gates"] is None
      else:
        assert block["gates"].shape == (2, side, side, gate_channels[stage])
  assert viz.modulator_norm(inter[1], "mean").shape == (2, 4, 4)
  assert len(viz.level_names(model, 1)) == 3 + int(model.use_global_context)


def assert_picture(path):
  """The PNG holds a picture: neither blank nor a handful of flat colours."""
  img = np.asarray(Image.open(path).convert("RGB"))
  assert img.astype(np.float64).var() > 100.0, "the picture is (nearly) blank"
  assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50, "too few distinct colours"


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("viz")
  model, params, kw = tiny()
  meta = {"model": "focalnet_tiny_srf", "model_overrides": kw}
  checkpoint.save(tmp / "ckpt", {"params": params}, meta, step=0)  # the converter's format
  rng = np.random.default_rng(0)
  img = np.zeros((40, 36, 3), np.uint8)
  img[8:30, 10:26] = rng.integers(100, 255, (22, 16, 3))
  Image.fromarray(img).save(tmp / "image.png")
  return tmp


def test_modulation_picture_from_checkpoint(tiny_checkpoint):
  from configs import default

  config = default.get_config()
  config.image_size = SIZE
  ckpt, image = str(tiny_checkpoint / "ckpt"), str(tiny_checkpoint / "image.png")
  fig = viz.image_figure(ckpt, image, config=config, k=3)
  titles = [ax.get_title() for ax in fig.get_axes()]
  assert titles[:2] == [f"input ({SIZE}×{SIZE}, as the model sees it)", "top-3 predictions"]
  # Per stage: the modulator map, then one gate map per focal level and the global context.
  assert sum(t.startswith("modulator") for t in titles) == 2
  gates = [t.split("\n")[0] for t in titles if t.startswith("gate:")]
  assert gates == ["gate: level 0 (3×3)", "gate: level 1 (5×5)", "gate: global",
                   "gate: level 0 (3×3)", "gate: level 1 (5×5)", "gate: level 2 (7×7)", "gate: global"]
  bars = [p.get_width() for p in fig.get_axes()[1].patches]
  assert len(bars) == 3 and bars == sorted(bars) and 0 < sum(bars) <= 1  # top prediction drawn at the top
  out = viz.visualize_image(ckpt, image, str(tiny_checkpoint / "out" / "mod.png"), config=config)
  assert_picture(out)


def test_modulation_picture_without_gates():
  model, params, _ = tiny(use_gating=False)
  x = images()
  logits, inter = viz.modulation_intermediates(model, params, x)
  preds = [(f"class_{i}", 0.1) for i in range(5)]
  fig = viz.modulation_figure(model, x[0], inter, preds)
  titles = [ax.get_title() for ax in fig.get_axes()]
  assert sum("modulator" in t for t in titles) == 2  # one per stage
  assert not any("gate" in t for t in titles)


def test_clear_errors(tiny_checkpoint, tmp_path):
  img = str(tiny_checkpoint / "image.png")
  with pytest.raises(FileNotFoundError, match="No checkpoint"):
    viz.visualize_image(str(tmp_path / "nope"), img, str(tmp_path / "o.png"))
  with pytest.raises(FileNotFoundError, match="No image file"):
    viz.visualize_image(str(tiny_checkpoint / "ckpt"), str(tmp_path / "missing.png"), str(tmp_path / "o.png"))
  (tmp_path / "broken.png").write_bytes(b"not an image")
  with pytest.raises(ValueError, match="Cannot read image"):
    viz.visualize_image(str(tiny_checkpoint / "ckpt"), str(tmp_path / "broken.png"), str(tmp_path / "o.png"))
  with pytest.raises(FileNotFoundError, match="train.py writes"):
    viz.visualize_curves(str(tmp_path), str(tmp_path / "curves.png"))
  (tmp_path / "metrics.jsonl").write_text("")
  with pytest.raises(ValueError, match="no train or eval records yet"):
    viz.visualize_curves(str(tmp_path), str(tmp_path / "curves.png"))


def write_metrics(path, with_eval=True):
  records = []
  for step in range(10, 110, 10):
    records.append({"step": step, "split": "train", "time": step, "loss": 3.0 / step, "grad_norm": 1.0,
                    "lr": 1e-3 * step / 100, "img_per_s": 500.0 + step})
    if with_eval and step % 30 == 0:
      records.append({"step": step, "split": "eval", "time": step, "loss": 2.0 / step, "top1": step / 100,
                      "top5": 1.0, "num_examples": 100.0, "ema_top1": step / 110, "ema_loss": 2.5 / step})
  # A resume from step 60 re-logs steps 70.. with other values; the later record wins.
  resumed = [dict(r, loss=r["loss"] + 1.0) for r in records if r["step"] >= 70]
  with open(path, "w") as f:
    for r in records + resumed:
      f.write(json.dumps(r) + "\n")


def test_read_metrics_keeps_last_record_per_step(tmp_path):
  write_metrics(tmp_path / "metrics.jsonl")
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 110, "split": "tra')  # the last line of a run killed mid-write
  runs = runlog.read_metrics(str(tmp_path))
  steps = [r["step"] for r in runs["train"]]
  assert steps == sorted(set(steps)) == list(range(10, 110, 10))
  assert runs["train"][-1]["loss"] == pytest.approx(3.0 / 100 + 1.0)
  assert runs["train"][0]["loss"] == pytest.approx(3.0 / 10)
  assert [r["step"] for r in runs["eval"]] == [30, 60, 90]
  assert runs["eval"][-1]["loss"] == pytest.approx(2.0 / 90 + 1.0)


def expected_loss(step, split):
  """What write_metrics logged last for `step`: a resume re-logged steps 70 on, 1.0 higher."""
  return (3.0 if split == "train" else 2.0) / step + (1.0 if step >= 70 else 0.0)


@pytest.mark.parametrize("with_eval", [True, False])
def test_curves_picture(tmp_path, with_eval):
  write_metrics(tmp_path / "metrics.jsonl", with_eval)
  out = viz.visualize_curves(str(tmp_path), str(tmp_path / "curves.png"))
  assert_picture(out)
  fig = viz.curves_figure(runlog.read_metrics(str(tmp_path)))
  loss, top1, lr, rate = fig.get_axes()
  assert [ax.get_title() for ax in fig.get_axes()] == ["loss", "eval top-1", "learning rate", "training throughput"]
  assert all(ax.get_xlabel() == "step" for ax in fig.get_axes())
  # The curves are the metrics, each step once with its last value (the resume's re-logged steps).
  steps = np.arange(10, 110, 10)
  lines = {line.get_label(): line for line in loss.get_lines()}
  np.testing.assert_allclose(lines["train loss"].get_xdata(), steps)
  np.testing.assert_allclose(lines["train loss"].get_ydata(), [expected_loss(s, "train") for s in steps])
  np.testing.assert_allclose(lr.get_lines()[0].get_ydata(), 1e-3 * steps / 100)
  np.testing.assert_allclose(rate.get_lines()[0].get_ydata(), 500.0 + steps)
  if with_eval:
    np.testing.assert_allclose(lines["eval loss"].get_xdata(), [30, 60, 90])
    np.testing.assert_allclose(lines["eval loss"].get_ydata(), [expected_loss(s, "eval") for s in (30, 60, 90)])
    assert [line.get_label() for line in top1.get_lines()] == ["eval top-1", "eval top-1 (EMA)"]
    np.testing.assert_allclose(top1.get_lines()[0].get_ydata(), [30, 60, 90])
  else:
    assert set(lines) == {"train loss"} and not top1.get_lines()
    notes = [t.get_text() for ax in fig.get_axes() for t in ax.texts]
    notes += [ax.get_legend().get_title().get_text() for ax in fig.get_axes() if ax.get_legend()]
    assert notes.count("no eval records yet") == 2  # loss legend and top-1 panel


def test_cli_curves_and_error_exit(tmp_path):
  write_metrics(tmp_path / "metrics.jsonl")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  run = lambda *args: subprocess.run([sys.executable, os.path.join(ROOT, "visualize.py"), *args],
                                     capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
  ok = run("--workdir", str(tmp_path), "--curves")
  assert ok.returncode == 0, ok.stderr
  assert_picture(tmp_path / "curves.png")
  missing = run("--workdir", str(tmp_path / "none"), "--curves")
  assert missing.returncode == 1
  assert "metrics.jsonl" in missing.stderr and "train.py" in missing.stderr
