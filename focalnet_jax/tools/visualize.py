"""Seeing inside a FocalNet: modulator maps, gate maps and training curves as pictures.

Focal modulation (paper Sec. 3.2) computes, at every location, a modulator h(ctx_all) from
gated contexts at growing ranges. Its per-location L2 norm shows where the network gathers
context (the paper's Fig. 1/5), and the raw gates show how each location weighs each focal
level and the global context. `FocalModulation` sows both into the 'intermediates'
collection; `modulation_intermediates` collects them without changing the logits.

Figures are drawn with matplotlib's Agg backend at a fixed size and dpi (no tight bounding
box), so a figure's pixel size depends only on its layout, never on its text.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed or wanted
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from focalnet_jax import atomic  # noqa: E402
from focalnet_jax import model as model_lib  # noqa: E402
from focalnet_jax.train import runlog  # noqa: E402

Intermediates = dict[int, list[dict[str, np.ndarray | None]]]

DPI = 100
PANEL_INCHES = 2.2  # side of one image panel; figure sizes are multiples of it


# --- extracting the intermediates ----------------------------------------------------------


def modulation_intermediates(model: model_lib.FocalNet, params: Any,
                             images: jax.Array) -> tuple[jax.Array, Intermediates]:
  """(logits, {stage: [per block {'modulator': (B,h,w,C), 'gates': (B,h,w,G) or None}]}).

  G = focal_level + 1 with the global context (else focal_level); gates are None when the
  model has `use_gating=False`. The logits are those of `model.apply(..., train=False)`.
  """
  logits, tree = _apply_with_intermediates(model, params, images)
  out: Intermediates = {}
  for i, depth in enumerate(model.depths):
    stage = tree[f"layers_{i}"]
    blocks = []
    for j in range(depth):
      sown = stage[f"blocks_{j}"]["modulation"]
      # `sow` appends to a tuple; one forward pass leaves exactly one entry.
      gates = sown.get("gates")
      blocks.append({"modulator": np.asarray(sown["modulator"][0]),
                     "gates": None if gates is None else np.asarray(gates[0])})
    out[i] = blocks
  return logits, out


@functools.partial(jax.jit, static_argnums=0)  # modules are hashable: one compile per architecture
def _apply_with_intermediates(model: model_lib.FocalNet, params: Any, images: jax.Array):
  logits, state = model.apply({"params": params}, images, train=False, mutable=["intermediates"])
  return logits, state["intermediates"]


def modulator_norm(blocks: Sequence[dict[str, Any]], reduce: str = "last") -> np.ndarray:
  """Per-location L2 norm over channels of h(ctx_all): (B, h, w), of the stage's last block
  (`reduce='last'`) or averaged over its blocks (`reduce='mean'`)."""
  norms = [np.linalg.norm(np.asarray(b["modulator"], np.float32), axis=-1) for b in blocks]
  if reduce == "last":
    return norms[-1]
  if reduce == "mean":
    return np.mean(norms, axis=0)
  raise ValueError(f"reduce={reduce!r} must be 'last' or 'mean'.")


def upsample(maps: np.ndarray, height: int, width: int, method: str = "bilinear") -> np.ndarray:
  """(B, h, w) -> (B, height, width), smoothly (jax.image.resize)."""
  maps = jnp.asarray(maps, jnp.float32)
  return np.asarray(jax.image.resize(maps, (maps.shape[0], height, width), method))


def level_names(model: model_lib.FocalNet, stage: int) -> list[str]:
  """Names of a stage's gate channels: 'level l (k×k)' per focal level, then 'global'."""
  n = model.num_stages
  level = model_lib.per_stage(model.focal_levels, n, "focal_levels")[stage]
  window = model_lib.per_stage(model.focal_windows, n, "focal_windows")[stage]
  names = [f"level {l} ({k}×{k})" for l, k in
           enumerate(window + model.focal_factor * l for l in range(level))]
  if model.use_global_context:
    names.append("global")
  return names


# --- the modulation figure ----------------------------------------------------------------


def _display_image(image: np.ndarray, mean: Sequence[float] | None,
                   std: Sequence[float] | None) -> np.ndarray:
  """A normalised (H, W, 3) model input back to [0, 1] RGB for display."""
  img = np.asarray(image, np.float32)
  if mean is not None and std is not None:
    img = img * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
  else:  # unknown normalisation: stretch to the full range
    img = (img - img.min()) / max(float(img.max() - img.min()), 1e-12)
  return np.clip(img, 0.0, 1.0)


def modulation_figure(model: model_lib.FocalNet, image: np.ndarray, inter: Intermediates,
                      predictions: Sequence[tuple[str, float]], *, mean: Sequence[float] | None = None,
                      std: Sequence[float] | None = None, reduce: str = "last",
                      title: str | None = None, index: int = 0) -> plt.Figure:
  """One figure: the input and its top-k predictions, then one row per stage with the
  modulator-norm overlay and the gate maps of the stage's last block (one panel per focal
  level and the global level, one colour scale per stage).

  `image` is one normalised model input (H, W, 3); `inter` comes from
  `modulation_intermediates` and `index` picks the batch element.
  """
  stages = sorted(inter)
  has_gates = inter[stages[0]][-1]["gates"] is not None
  n_gates = max(len(level_names(model, s)) for s in stages) if has_gates else 0
  n_cols = max(4, 1 + n_gates)
  n_rows = 1 + len(stages)
  fig = plt.figure(figsize=(PANEL_INCHES * n_cols + 1.0, PANEL_INCHES * 1.15 * n_rows + 0.4), dpi=DPI,
                   layout="constrained")
  fig.suptitle(title or "Focal modulation", fontsize=13)
  rows = np.atleast_1d(fig.subfigures(n_rows, 1, hspace=0.03))
  shown = _display_image(image, mean, std)
  _draw_input_row(rows[0], shown, predictions, n_cols)
  for s, row in zip(stages, rows[1:]):
    labels = level_names(model, s) if has_gates else []
    _draw_stage_row(row, s, inter[s], shown, labels, n_cols, reduce, index)
  return fig


def _draw_input_row(row: Any, shown: np.ndarray, predictions: Sequence[tuple[str, float]], n_cols: int) -> None:
  """The input as the model sees it, and a bar per top-k prediction (the top one at the top)."""
  height, width = shown.shape[:2]
  top = row.subplot_mosaic([["input", "gap"] + ["pred"] * (n_cols - 2)],
                           width_ratios=[1, 0.25] + [1] * (n_cols - 2))
  top["gap"].remove()  # room for the class names left of the bars
  ax = top["input"]
  ax.imshow(shown, interpolation="nearest")
  ax.set_title(f"input ({height}×{width}, as the model sees it)", fontsize=9)
  ax.set_axis_off()
  ax = top["pred"]
  names = [_shorten(n) for n, _ in predictions][::-1]
  probs = [p for _, p in predictions][::-1]
  ax.barh(range(len(probs)), probs, color="tab:blue", height=0.7)
  ax.set_yticks(range(len(names)), names, fontsize=9)
  ax.set_xlim(0, 1)
  for y, p in enumerate(probs):
    inside = p > 0.8  # a long bar has room for its label, in white
    ax.text(p - 0.01 if inside else p + 0.01, y, f"{p:.1%}", va="center", ha="right" if inside else "left",
            fontsize=9, color="white" if inside else "black")
  ax.set_xlabel("probability", fontsize=9)
  ax.set_title(f"top-{len(probs)} predictions", fontsize=10)
  ax.tick_params(axis="x", labelsize=8)


def _draw_stage_row(row: Any, stage: int, blocks: Sequence[dict[str, Any]], shown: np.ndarray,
                    labels: Sequence[str], n_cols: int, reduce: str, index: int) -> None:
  """One stage: the modulator-norm overlay, then one gate map per name in `labels`."""
  height, width = shown.shape[:2]
  depth = len(blocks)
  norm = modulator_norm(blocks, reduce)[index : index + 1]
  h, w = norm.shape[1:]
  axes = row.subplots(1, n_cols)
  row.suptitle(f"stage {stage + 1}: {h}×{w} tokens, {depth} block{'s' if depth > 1 else ''}", fontsize=11,
               x=0.01, ha="left", fontweight="bold")
  ax = axes[0]
  ax.imshow(shown.mean(-1), cmap="gray", interpolation="nearest")
  im = ax.imshow(upsample(norm, height, width)[0], cmap="jet", alpha=0.55, interpolation="bilinear")
  which = "last block" if reduce == "last" else "mean over blocks"
  ax.set_title(f"modulator ‖h(ctx_all)‖₂\n{which}, upsampled", fontsize=9)
  ax.set_axis_off()
  cb = row.colorbar(im, ax=ax, shrink=0.8, pad=0.02)
  cb.ax.tick_params(labelsize=7)
  for ax in axes[1 + len(labels):]:
    ax.remove()
  if not labels:
    return
  gates = np.asarray(blocks[-1]["gates"][index], np.float32)  # (h, w, G)
  vmax = max(float(np.abs(gates).max()), 1e-6)  # symmetric: the sign of a gate is its meaning
  for g, name in enumerate(labels):
    ax = axes[1 + g]
    im = ax.imshow(gates[..., g], cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
    ax.set_title(f"gate: {name}\nmean {gates[..., g].mean():+.2f}", fontsize=9)
    ax.set_axis_off()
  cb = row.colorbar(im, ax=list(axes[1 : 1 + len(labels)]), shrink=0.8, pad=0.02)
  cb.set_label(f"raw gate, block {depth}", fontsize=8)
  cb.ax.tick_params(labelsize=7)


def _shorten(name: str, limit: int = 22) -> str:
  name = name.split(",")[0]  # ImageNet names list synonyms after commas
  return name if len(name) <= limit else name[: limit - 1] + "…"


def save_figure(fig: plt.Figure, path: str) -> str:
  """Writes `fig` as PNG at its own size (no tight bbox, so the size is deterministic)."""
  path = os.path.abspath(os.path.expanduser(path))
  with atomic.replacing(path) as tmp:
    fig.savefig(tmp, dpi=fig.dpi, format="png")
  plt.close(fig)
  return path


def image_figure(checkpoint_path: str, image_path: str, *, config: ml_collections.ConfigDict | None = None,
                 step: int | None = None, ema: bool = False, reduce: str = "last", k: int = 5,
                 title: str | None = None) -> plt.Figure:
  """Checkpoint + image file -> the modulation figure (see `modulation_figure`).

  The image goes through the eval transform of `config`, or (None) the weights' own (that of
  the run that wrote the checkpoint, or the published weights': `from_pretrained(...).info`).
  """
  from focalnet_jax import evaluation
  from focalnet_jax.weights import from_pretrained, is_hub_id

  if not os.path.exists(checkpoint_path) and not is_hub_id(checkpoint_path):
    raise FileNotFoundError(
        f"No checkpoint at {checkpoint_path!r}: pass a train.py --workdir (holding checkpoints/), "
        "a directory written by `python -m focalnet_jax.tools.convert`, published weights or a hub id.")
  if not os.path.isfile(image_path):
    raise FileNotFoundError(f"No image file at {image_path!r}.")
  loaded = from_pretrained(checkpoint_path, step=step, ema=ema)
  model, info = loaded.model, loaded.info
  if config is not None:  # the caller's eval transform instead of the weights' own
    info = dataclasses.replace(info, image_size=config.image_size, crop_ratio=config.crop_ratio,
                               interpolation=config.interpolation, mean=tuple(config.aug.mean),
                               std=tuple(config.aug.std))
  model.check_image_size(info.image_size, info.image_size)
  images = info.load_images([image_path])
  logits, inter = modulation_intermediates(model, loaded.params, jnp.asarray(images))
  evaluation.num_classes_of(loaded.params)  # a clear error for a model without a head
  preds = evaluation.top_k(np.asarray(logits), info.class_names, min(k, len(info.class_names)))[0]
  title = title or f"{info.variant} (step {info.step}{', EMA' if ema else ''}) on {os.path.basename(image_path)}"
  return modulation_figure(model, images[0], inter, preds, mean=info.mean, std=info.std,
                           reduce=reduce, title=title)


def visualize_image(checkpoint_path: str, image_path: str, output: str, **kwargs: Any) -> str:
  """`image_figure(checkpoint_path, image_path, **kwargs)` as a PNG at `output`; returns its path."""
  return save_figure(image_figure(checkpoint_path, image_path, **kwargs), output)


def visualize_curves(workdir: str, output: str, title: str | None = None) -> str:
  """A run's metrics.jsonl -> the curves figure as a PNG at `output`; returns its path."""
  runs = runlog.read_metrics(workdir)
  if not runs["train"] and not runs["eval"]:
    raise ValueError(f"{workdir} has no train or eval records yet; wait for the first log step.")
  return save_figure(curves_figure(runs, title=title or f"Training curves: {workdir}"), output)


# --- training curves ----------------------------------------------------------------------


def _series(records: Sequence[dict[str, float]], key: str) -> tuple[np.ndarray, np.ndarray] | None:
  pts = [(r["step"], r[key]) for r in records if key in r and r[key] is not None]
  if not pts:
    return None
  steps, values = zip(*pts)
  return np.asarray(steps), np.asarray(values, np.float64)


def _note(ax: plt.Axes, text: str) -> None:
  ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=10,
          color="0.4", wrap=True)


def curves_figure(runs: dict[str, list[dict[str, float]]], title: str | None = None) -> plt.Figure:
  """Four panels against step: train/eval loss, eval top-1 (and EMA), learning rate, img/s."""
  fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), dpi=DPI, layout="constrained")
  fig.suptitle(title or "Training curves", fontsize=13)
  train, ev = runs.get("train", []), runs.get("eval", [])
  no_eval = "no eval records yet"

  ax = axes[0, 0]
  for records, key, label, style in ((train, "loss", "train loss", "-"), (ev, "loss", "eval loss", "o-"),
                                     (ev, "ema_loss", "eval loss (EMA)", "s--")):
    series = _series(records, key)
    if series is not None:
      ax.plot(*series, style, label=label, markersize=3, linewidth=1.3)
  ax.set_title("loss")
  ax.set_ylabel("cross-entropy")
  if ax.lines:  # the legend carries the note, so it never sits on a curve
    ax.legend(fontsize=9, title=None if ev else no_eval, title_fontsize=8)
  else:
    _note(ax, "no loss records")

  ax = axes[0, 1]
  best = []
  for key, label, style in (("top1", "eval top-1", "o-"), ("ema_top1", "eval top-1 (EMA)", "s--")):
    series = _series(ev, key)
    if series is not None:
      ax.plot(series[0], 100 * series[1], style, label=label, markersize=3, linewidth=1.3)
      last, top = 100 * series[1][-1], 100 * series[1].max()
      best.append(f"{label.replace('eval ', '')}: last {last:.2f}%, best {top:.2f}%")
  if ax.lines:
    ax.legend(fontsize=9, loc="lower right", title="\n".join(best), title_fontsize=8)
  else:
    _note(ax, no_eval)
  ax.set_title("eval top-1")
  ax.set_ylabel("accuracy (%)")

  for ax, key, label, ylabel in ((axes[1, 0], "lr", "learning rate", "lr"),
                                 (axes[1, 1], "img_per_s", "training throughput", "images / s")):
    series = _series(train, key)
    if series is not None:
      ax.plot(*series, "-", color="tab:green" if key == "lr" else "tab:purple", linewidth=1.3)
    else:
      _note(ax, f"no train records with {key!r} yet")
    ax.set_title(label)
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
  axes[1, 0].ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
  for ax in axes.flat:
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  return fig
