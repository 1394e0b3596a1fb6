"""A sweep's results: one row per point with results, written as results.csv, results.md and results.png.

A finished point's metrics come from its result.json; one still running (or launched with
train.py on a cluster) reports its last eval record from metrics.jsonl, read with
`runlog.read_metrics`, so after a resume the re-logged steps count once, with their later values.
Each row also carries the model's size and cost (computed abstractly from the point's config) and
the median training img/s.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
from typing import TYPE_CHECKING, Any, Sequence

import ml_collections
from absl import logging

from focalnet_jax import atomic
from focalnet_jax.tools import sweep
from focalnet_jax.train import runlog

if TYPE_CHECKING:  # matplotlib is imported only when a plot is drawn
  from matplotlib.axes import Axes
  from matplotlib.figure import Figure

RESULTS_CSV, RESULTS_MD, RESULTS_PNG = "results.csv", "results.md", "results.png"
# (metric key, column title, is a fraction shown as %) in table order; EMA columns appear only if present.
METRICS = (("top1", "top-1 (%)", True), ("top5", "top-5 (%)", True), ("loss", "eval loss", False),
           ("ema_top1", "EMA top-1 (%)", True), ("ema_top5", "EMA top-5 (%)", True),
           ("ema_loss", "EMA eval loss", False))

Row = dict[str, Any]


# --- collecting ------------------------------------------------------------------------------


def _model_cost(config: ml_collections.ConfigDict, num_classes: int) -> tuple[int, float]:
  """(params, GFLOPs as multiply-adds) of the run's model at its image size, computed abstractly."""
  from focalnet_jax.tools import summary
  from focalnet_jax.train import state as train_state

  model, _ = train_state.build_model(config, num_classes)
  variables = summary.abstract_variables(model, config.image_size)
  return (summary.count_params(model, variables=variables),
          summary.count_macs(model, config.image_size, variables=variables) / 1e9)


def _metrics_of(point_dir: str) -> dict[str, list[dict[str, float]]]:
  """The point's metrics.jsonl by split; empty lists before its first log step."""
  if not os.path.isfile(os.path.join(point_dir, runlog.METRICS_FILE)):
    return {"train": [], "eval": []}
  return runlog.read_metrics(point_dir)


def collect_row(run: sweep.Run, workdir: str) -> Row | None:
  """The row of one point, or None when it has neither a result.json nor an eval record yet."""
  point_dir = os.path.join(workdir, run.name)
  records = _metrics_of(point_dir)
  result = None
  if sweep.is_finished(workdir, run.name):
    if sweep.stale_changes(workdir, run):  # another config's result is never put beside this one's
      logging.warning("%s: its result.json is from another config; left out of the table.", run.name)
      return None
    with open(sweep.result_path(workdir, run.name)) as f:
      result = json.load(f)
  if result is None and not records["eval"]:
    return None
  meta = None
  num_classes = (result or {}).get("num_classes") or run.config.model.num_classes
  if num_classes is None or result is None:
    meta = sweep.checkpoint_meta(point_dir) or {}
    num_classes = num_classes or meta.get("num_classes")
  row: Row = {"name": run.name, "overrides": sweep.format_overrides(run.overrides)}
  if result is not None:
    metrics = result["metrics"]
    row.update(status="done", step=metrics.get("step"), wall_s=result.get("wall_s"))
  else:
    metrics = records["eval"][-1]
    total = (meta or {}).get("schedule", {}).get("total_steps")
    status = "done" if total and metrics["step"] >= total else f"step {metrics['step']}/{total or '?'}"
    row.update(status=status, step=metrics["step"], wall_s=None)
  for key, _, _ in METRICS:
    row[key] = metrics.get(key)
  rates = [r["img_per_s"] for r in records["train"] if "img_per_s" in r]
  row["img_per_s"] = statistics.median(rates) if rates else None
  row["params"], row["gflops"] = _model_cost(run.config, num_classes) if num_classes else (None, None)
  row.update(run.overrides)
  return row


def collect(runs: Sequence[sweep.Run], workdir: str) -> list[Row]:
  """One row per run that has results in `workdir`, in sweep order.

  An unfinished run's status is 'done' once its last eval is at the schedule's last step
  (from the checkpoint metadata), else 'step N/total'.
  """
  rows = [collect_row(run, workdir) for run in runs]
  return [r for r in rows if r is not None]


# --- tables ------------------------------------------------------------------------------------


def _columns(rows: Sequence[Row]) -> list[tuple[str, str, bool]]:
  return [m for m in METRICS if any(r.get(m[0]) is not None for r in rows)]


def write_csv(rows: Sequence[Row], path: str) -> None:
  """Raw values: fractions stay fractions, one column per overridden field."""
  swept = list(dict.fromkeys(k for r in rows for k in r if "." in k))
  fields = ["name", "overrides", *swept, "status", "step", *[m[0] for m in _columns(rows)],
            "params", "gflops", "img_per_s", "wall_s"]
  out = io.StringIO()
  writer = csv.DictWriter(out, fieldnames=fields, extrasaction="ignore")
  writer.writeheader()
  for r in rows:
    writer.writerow({k: sweep.format_value(r[k]) if isinstance(r.get(k), (tuple, list)) else r.get(k)
                     for k in fields})
  atomic.write_text(path, out.getvalue())


def _fmt(value: Any, spec: str) -> str:
  return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _fmt_params(n: int | None) -> str:
  if n is None:
    return "–"
  return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def markdown_table(rows: Sequence[Row], title: str | None = None) -> str:
  """A GitHub Markdown table, one row per point in sweep order, ready to paste into a README."""
  metric_cols = _columns(rows)
  header = ["point", "overrides", *[m[1] for m in metric_cols], "params", "GFLOPs", "train img/s", "minutes"]
  if any(r["status"] != "done" for r in rows):
    header.append("status")
  align = ["---", "---"] + ["---:"] * (len(header) - 2)
  lines = [] if title is None else [title, ""]
  lines += ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
  for r in rows:
    cells = [f"`{r['name']}`", r["overrides"] or "(base)"]
    cells += [_fmt(None if r[k] is None else 100 * r[k], ".2f") if pct else _fmt(r[k], ".4f")
              for k, _, pct in metric_cols]
    cells += [_fmt_params(r["params"]), _fmt(r["gflops"], ".3g"), _fmt(r["img_per_s"], ".0f"),
              _fmt(None if r["wall_s"] is None else r["wall_s"] / 60, ".1f")]
    if "status" in header:
      cells.append(r["status"])
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


# --- the plot ----------------------------------------------------------------------------------


def numeric_axis(overrides: Sequence[dict[str, Any]]) -> str | None:
  """The swept field when every point sets exactly that one field to a number, else None."""
  keys = {tuple(o) for o in overrides}
  if len(keys) != 1 or len(next(iter(keys))) != 1:
    return None
  key = next(iter(keys))[0]
  values = [o[key] for o in overrides]
  ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
  return key if ok else None


def _top1_series(rows: Sequence[Row], metric: str) -> list[float]:
  """The rows' `metric` in %, NaN where a row has none."""
  return [100 * r[metric] if r.get(metric) is not None else float("nan") for r in rows]


def _plot_accuracy(ax: Axes, rows: Sequence[Row], xs: Sequence[Any], key: str | None) -> None:
  """Left panel: top-1 (and EMA top-1) against the swept value, or against the point names."""
  for metric, label, style in (("top1", "top-1", "o-"), ("ema_top1", "EMA top-1", "s--")):
    ys = _top1_series(rows, metric)
    if all(math.isnan(y) for y in ys):
      continue
    ax.plot(xs, ys, style, label=label)
    for x, y in zip(xs, ys):
      if not math.isnan(y):
        ax.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
  ax.set_xticks(xs)
  if key:
    ax.set_xlabel(key.removeprefix("model."))
  else:
    ax.set_xticklabels([r["name"] for r in rows], rotation=20, ha="right", fontsize=8)
  ax.set_ylabel("eval top-1 (%)")
  ax.grid(alpha=0.3)
  ax.margins(y=0.2)
  if len(ax.get_lines()) > 1:
    ax.legend(fontsize=8)


def _plot_cost(ax: Axes, rows: Sequence[Row]) -> None:
  """Right panel: top-1 against the model's cost, once every row has one."""
  import matplotlib.ticker

  gflops = [r["gflops"] for r in rows if r["gflops"] is not None]
  # Quickstart models cost a few MFLOPs: label the axis so its ticks stay short.
  scale, unit = (1e3, "MFLOPs") if gflops and max(gflops) < 0.1 else (1.0, "GFLOPs")
  ys = _top1_series(rows, "top1")
  if len(gflops) == len(rows) and not all(math.isnan(y) for y in ys):
    gx = [g * scale for g in gflops]
    ax.plot(gx, ys, "o")
    for g, y, r in zip(gx, ys, rows):
      ax.annotate(r["name"], (g, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
  ax.set_xlabel(f"{unit} (multiply-adds) per image")
  ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(5))
  ax.set_ylabel("eval top-1 (%)")
  ax.grid(alpha=0.3)
  ax.margins(x=0.25, y=0.2)


def results_figure(rows: Sequence[Row], runs: Sequence[sweep.Run], title: str) -> Figure:
  """Top-1 against the swept value (left) and against the model's cost (right)."""
  import matplotlib

  matplotlib.use("Agg")  # files only: no display is needed or wanted
  import matplotlib.pyplot as plt

  by_name = {r.name: r for r in runs}
  overrides = [by_name[r["name"]].overrides for r in rows]
  key = numeric_axis(overrides)
  xs = [o[key] for o in overrides] if key else list(range(len(rows)))
  fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=100)
  _plot_accuracy(ax, rows, xs, key)
  _plot_cost(ax2, rows)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return fig


def plot(rows: Sequence[Row], runs: Sequence[sweep.Run], path: str, title: str) -> None:
  """Writes `results_figure` as a PNG at `path`."""
  import matplotlib.pyplot as plt

  fig = results_figure(rows, runs, title)
  with atomic.replacing(path) as tmp:
    fig.savefig(tmp)
  plt.close(fig)


def aggregate(runs: Sequence[sweep.Run], workdir: str, spec: str) -> list[Row]:
  """Writes results.csv, results.md and (with any rows) results.png in `workdir`; returns the rows.

  `spec` (the sweep config as given, e.g. 'configs/ablations/focal_levels.py:quickstart') titles
  the table and the plot.
  """
  rows = collect(runs, workdir)
  os.makedirs(workdir, exist_ok=True)
  write_csv(rows, os.path.join(workdir, RESULTS_CSV))
  atomic.write_text(os.path.join(workdir, RESULTS_MD), markdown_table(rows, f"Sweep `{spec}`:"))
  if rows:
    plot(rows, runs, os.path.join(workdir, RESULTS_PNG), f"Sweep {spec}")
  return rows
