"""Ablation sweeps: expand a sweep config into runs, run them one by one, aggregate the results.

A sweep config (configs/ablations/*.py) has `get_config(arg)` (the base) and `get_sweep(arg)`
(points: a name and dotted config overrides). Each point trains in `<workdir>/<name>`; a point is
finished when `<workdir>/<name>/result.json` exists (written only after training returns), so a
rerun skips finished points and resumes an interrupted one from its checkpoints. `aggregate`
collects every point's metrics, size, cost and speed into results.csv, results.md and results.png.

Points run in-process, one after another: the trainer keeps no state between calls (its jitted
functions are local; `jax.clear_caches()` drops their executables between points), so a point
needs no fresh interpreter, JAX starts once, a failing point is recorded and the sweep goes on, and
tests can inject a fake train function. For isolation on accelerators, or for parallel runs on a
cluster, `launch_commands` gives one `python train.py` command per point instead.
"""
from __future__ import annotations

import csv
import dataclasses
import difflib
import gc
import importlib.util
import json
import math
import os
import shlex
import statistics
import sys
import time
import traceback
from typing import Any, Callable, Iterable, Sequence

import ml_collections
from absl import logging

RESULT_FILE = "result.json"
METRICS_FILE = "metrics.jsonl"
RESULTS_CSV, RESULTS_MD, RESULTS_PNG, COMMANDS_SH = "results.csv", "results.md", "results.png", "commands.sh"
# (metric key, column title, is a fraction shown as %) in table order; EMA columns appear only if present.
METRICS = (("top1", "top-1 (%)", True), ("top5", "top-5 (%)", True), ("loss", "eval loss", False),
           ("ema_top1", "EMA top-1 (%)", True), ("ema_top5", "EMA top-5 (%)", True),
           ("ema_loss", "EMA eval loss", False))

TrainFn = Callable[[ml_collections.ConfigDict, str], dict[str, float]]


@dataclasses.dataclass(frozen=True)
class Run:
  """One sweep point: its name, its overrides of the base config, and the resulting config."""
  name: str
  overrides: dict[str, Any]
  config: ml_collections.ConfigDict


# --- loading and expanding -------------------------------------------------------------------


def split_spec(spec: str) -> tuple[str, str | None]:
  """'configs/ablations/x.py:quickstart' -> (path, 'quickstart'); no ':' -> (path, None)."""
  path, sep, arg = spec.partition(":") if not os.path.exists(spec) else (spec, "", "")
  return path, (arg if sep else None)


def load_module(path: str):
  """Imports a config file by path, with the folder holding its `configs` package on sys.path
  (config files import `from configs import ...`)."""
  folder = os.path.dirname(os.path.abspath(path))
  while os.path.dirname(folder) != folder and not os.path.exists(os.path.join(folder, "configs", "__init__.py")):
    folder = os.path.dirname(folder)
  if os.path.exists(os.path.join(folder, "configs", "__init__.py")) and folder not in sys.path:
    sys.path.insert(0, folder)
  name = "_sweep_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  if spec is None or spec.loader is None:
    raise FileNotFoundError(f"No config file at {path!r}.")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_sweep(spec: str) -> tuple[ml_collections.ConfigDict, list[dict[str, Any]]]:
  """(base config, points) of a sweep config given as 'path[:arg]'."""
  path, arg = split_spec(spec)
  module = load_module(path)
  if not hasattr(module, "get_sweep"):
    raise ValueError(f"{path} defines no get_sweep(arg): it is not a sweep config (see configs/ablations/).")
  return module.get_config(arg), list(module.get_sweep(arg))


def set_field(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
  """config[a][b][c] = value for key 'a.b.c'; an unknown field is an error naming close ones."""
  target = config
  *path, last = key.split(".")
  for i, part in enumerate(path + [last]):
    fields = list(target.keys())
    if part not in fields:
      close = difflib.get_close_matches(part, fields, n=3)
      hint = f" Did you mean {' or '.join('.'.join(path[:i] + [c]) for c in close)}?" if close else ""
      raise KeyError(f"Sweep override {key!r}: the config has no field {'.'.join((path + [last])[:i + 1])!r}.{hint}")
    if i < len(path):
      target = target[part]
  target[last] = value


def expand(base: ml_collections.ConfigDict, points: Sequence[dict[str, Any]],
           only: Iterable[str] | None = None) -> list[Run]:
  """One Run per point (in sweep order), each a copy of `base` with the point's overrides.

  `only` keeps the named points; a name that is not in the sweep is an error.
  """
  names = [p["name"] for p in points]
  if len(set(names)) != len(names):
    raise ValueError(f"Sweep point names must be unique: {names}.")
  if only is not None:
    only = list(only)
    unknown = [n for n in only if n not in names]
    if unknown:
      raise ValueError(f"--only names {unknown} are not points of this sweep: {names}.")
  runs = []
  for p in points:
    if only is not None and p["name"] not in only:
      continue
    config = base.copy_and_resolve_references()
    for key, value in p["overrides"].items():
      set_field(config, key, value)
    runs.append(Run(p["name"], dict(p["overrides"]), config))
  return runs


# --- running ----------------------------------------------------------------------------------


def result_path(workdir: str, name: str) -> str:
  return os.path.join(workdir, name, RESULT_FILE)


def is_finished(workdir: str, name: str) -> bool:
  return os.path.exists(result_path(workdir, name))


def _write_json(path: str, obj: Any) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, path)  # atomic: a crash never leaves a half-written marker


def _checkpoint_meta(point_dir: str) -> dict[str, Any] | None:
  """The trainer's checkpoint metadata (class count, schedule), or None without checkpoints."""
  ckpt = os.path.join(point_dir, "checkpoints")
  if not os.path.isdir(ckpt) or not os.listdir(ckpt):
    return None
  from focalnet_jax import checkpoint

  try:
    return checkpoint.read_meta(ckpt)
  except (ValueError, FileNotFoundError) as e:
    logging.warning("Cannot read the checkpoint metadata of %s: %s", point_dir, e)
    return None


def _default_train_fn(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  from focalnet_jax.train import loop as trainer

  return trainer.train_and_evaluate(config, workdir)


def run_sweep(runs: Sequence[Run], workdir: str, train_fn: TrainFn | None = None) -> dict[str, list[str]]:
  """Trains every unfinished run in `workdir/<name>`, one after another.

  Finished runs (with result.json) are skipped; an interrupted one resumes from its checkpoints
  (the trainer does that). A run that raises is logged and the sweep goes on; a run stopped by
  SIGTERM (`preempted`) stops the sweep, unfinished. Returns {'ran', 'skipped', 'failed',
  'stopped'} lists of names.
  """
  train_fn = train_fn or _default_train_fn
  report: dict[str, list[str]] = {"ran": [], "skipped": [], "failed": [], "stopped": []}
  for i, run in enumerate(runs):
    point_dir = os.path.join(workdir, run.name)
    if is_finished(workdir, run.name):
      logging.info("[%d/%d] %s: finished already, skipping.", i + 1, len(runs), run.name)
      report["skipped"].append(run.name)
      continue
    logging.info("[%d/%d] %s: %s%s", i + 1, len(runs), run.name, format_overrides(run.overrides) or "the base config",
                 " (resuming)" if os.path.isdir(os.path.join(point_dir, "checkpoints")) else "")
    os.makedirs(point_dir, exist_ok=True)
    t0 = time.time()
    try:
      metrics = train_fn(run.config, point_dir)
    except Exception:  # noqa: BLE001 - one failed point must not lose the others
      logging.error("%s failed:\n%s", run.name, traceback.format_exc())
      report["failed"].append(run.name)
      continue
    finally:
      gc.collect()
      _clear_jax_caches()
    if metrics.get("preempted"):
      logging.warning("%s was stopped (SIGTERM) before finishing; rerun the same command to resume it.", run.name)
      report["stopped"].append(run.name)
      break
    meta = _checkpoint_meta(point_dir) or {}
    _write_json(result_path(workdir, run.name), {
        "name": run.name, "overrides": run.overrides, "metrics": metrics,
        "num_classes": meta.get("num_classes"), "wall_s": time.time() - t0, "finished_at": time.time(),
    })
    report["ran"].append(run.name)
  return report


def _clear_jax_caches() -> None:
  if "jax" in sys.modules:
    sys.modules["jax"].clear_caches()


# --- launch commands ---------------------------------------------------------------------------


def format_value(value: Any) -> str:
  """A value as config_flags parses it back: (3,3,16,3), False, add, 0.5."""
  if isinstance(value, (tuple, list)):
    inner = ",".join(format_value(v) for v in value)
    return f"({inner},)" if len(value) == 1 else f"({inner})"
  return str(value)


def launch_commands(spec: str, runs: Sequence[Run], workdir: str, extra_args: Sequence[str] = (),
                    python: str = "python") -> list[str]:
  """One `python train.py ...` command per run, to be launched from the repository root.

  `spec` is the sweep config as given to sweep.py (train.py loads the same file: its
  `get_config(arg)` is the base); `extra_args` are base overrides such as --config.seed=1.
  """
  commands = []
  for run in runs:
    args = [python, "train.py", f"--config={spec}", f"--workdir={os.path.join(workdir, run.name)}", *extra_args]
    args += [f"--config.{k}={format_value(v)}" for k, v in run.overrides.items()]
    commands.append(" ".join(shlex.quote(a) for a in args))
  return commands


def write_commands(path: str, commands: Sequence[str]) -> None:
  with open(path, "w") as f:
    f.write("#!/bin/sh\n# One training run per sweep point; run from the repository root, in any order or in parallel.\n")
    f.write("".join(c + "\n" for c in commands))
  os.chmod(path, 0o755)


# --- aggregation -------------------------------------------------------------------------------


def read_metrics_jsonl(point_dir: str) -> list[dict[str, Any]]:
  path = os.path.join(point_dir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  records = []
  with open(path) as f:
    for line in f:
      line = line.strip()
      if line:
        try:
          records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a crash
          continue
  return records


def _model_cost(config: ml_collections.ConfigDict, num_classes: int) -> tuple[int, float]:
  """(params, GFLOPs) of the run's model at its image size, computed abstractly."""
  from focalnet_jax.tools import summary
  from focalnet_jax.train import loop as trainer

  model, _ = trainer.build_model(config, num_classes)
  variables = summary.abstract_variables(model, config.image_size)
  return (summary.count_params(model, variables=variables),
          summary.count_flops(model, config.image_size, variables=variables) / 1e9)


def collect(runs: Sequence[Run], workdir: str) -> list[dict[str, Any]]:
  """One row per run that has results in `workdir`, in sweep order.

  A finished run's metrics come from its result.json; an unfinished one (e.g. launched with
  train.py on a cluster) reports its last eval record from metrics.jsonl, with status 'done'
  once that eval is at the schedule's last step (from the checkpoint metadata).
  """
  rows = []
  for run in runs:
    point_dir = os.path.join(workdir, run.name)
    records = read_metrics_jsonl(point_dir)
    evals = [r for r in records if r.get("split") == "eval"]
    result = None
    if is_finished(workdir, run.name):
      with open(result_path(workdir, run.name)) as f:
        result = json.load(f)
    if result is None and not evals:
      continue
    meta = None
    num_classes = (result or {}).get("num_classes") or run.config.model.num_classes
    if num_classes is None or result is None:
      meta = _checkpoint_meta(point_dir) or {}
      num_classes = num_classes or meta.get("num_classes")
    row: dict[str, Any] = {"name": run.name, "overrides": format_overrides(run.overrides)}
    if result is not None:
      metrics = result["metrics"]
      row["status"] = "done"
      row["step"] = metrics.get("step")
      row["wall_s"] = result.get("wall_s")
    else:
      metrics = evals[-1]
      total = (meta or {}).get("schedule", {}).get("total_steps")
      row["status"] = "done" if total and metrics["step"] >= total else f"step {metrics['step']}/{total or '?'}"
      row["step"] = metrics["step"]
      row["wall_s"] = None
    for key, _, _ in METRICS:
      row[key] = metrics.get(key)
    rates = [r["img_per_s"] for r in records if r.get("split") == "train" and "img_per_s" in r]
    row["img_per_s"] = statistics.median(rates) if rates else None
    row["params"], row["gflops"] = _model_cost(run.config, num_classes) if num_classes else (None, None)
    for key, value in run.overrides.items():
      row[key] = value
    rows.append(row)
  return rows


def format_overrides(overrides: dict[str, Any]) -> str:
  """{'model.focal_levels': 0} -> 'focal_levels=0' (the 'model.' prefix dropped)."""
  return ", ".join(f"{k.removeprefix('model.')}={format_value(v)}" for k, v in overrides.items())


def _columns(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str, bool]]:
  return [m for m in METRICS if any(r.get(m[0]) is not None for r in rows)]


def write_csv(rows: Sequence[dict[str, Any]], path: str) -> None:
  """Raw values: fractions stay fractions, one column per overridden field."""
  swept = list(dict.fromkeys(k for r in rows for k in r if "." in k))
  fields = ["name", "overrides", *swept, "status", "step", *[m[0] for m in _columns(rows)],
            "params", "gflops", "img_per_s", "wall_s"]
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
      writer.writerow({k: format_value(r[k]) if isinstance(r.get(k), (tuple, list)) else r.get(k) for k in fields})


def _fmt(value: Any, spec: str) -> str:
  return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _fmt_params(n: int | None) -> str:
  if n is None:
    return "–"
  return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def markdown_table(rows: Sequence[dict[str, Any]], title: str | None = None) -> str:
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


def _numeric_axis(rows: Sequence[dict[str, Any]], overrides: Sequence[dict[str, Any]]) -> str | None:
  """The swept field when every point sets exactly that one field to a number, else None."""
  keys = {tuple(o) for o in overrides}
  if len(keys) != 1 or len(next(iter(keys))) != 1:
    return None
  key = next(iter(keys))[0]
  values = [o[key] for o in overrides]
  ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
  return key if ok else None


def plot(rows: Sequence[dict[str, Any]], runs: Sequence[Run], path: str, title: str) -> None:
  """Top-1 against the swept value (left) and against GFLOPs (right), as a small PNG."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import matplotlib.ticker  # noqa: F401 - MaxNLocator

  by_name = {r.name: r for r in runs}
  overrides = [by_name[r["name"]].overrides for r in rows]
  key = _numeric_axis(rows, overrides)
  xs = [o[key] for o in overrides] if key else list(range(len(rows)))
  gflops = [r["gflops"] for r in rows if r["gflops"] is not None]
  # Quickstart models cost a few MFLOPs: label the axis so its ticks stay short.
  flops_scale, flops_unit = (1e3, "MFLOPs") if gflops and max(gflops) < 0.1 else (1.0, "GFLOPs")
  fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=100)
  for metric, label, style in (("top1", "top-1", "o-"), ("ema_top1", "EMA top-1", "s--")):
    ys = [100 * r[metric] if r.get(metric) is not None else float("nan") for r in rows]
    if all(math.isnan(y) for y in ys):
      continue
    ax.plot(xs, ys, style, label=label)
    for x, y in zip(xs, ys):
      if not math.isnan(y):
        ax.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    gx = [r["gflops"] * flops_scale for r in rows if r["gflops"] is not None]
    if metric == "top1" and len(gx) == len(rows):
      ax2.plot(gx, ys, "o")
      for g, y, r in zip(gx, ys, rows):
        ax2.annotate(r["name"], (g, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
  if key:
    ax.set_xlabel(key.removeprefix("model."))
    ax.set_xticks(xs)
  else:
    ax.set_xticks(xs)
    ax.set_xticklabels([r["name"] for r in rows], rotation=20, ha="right", fontsize=8)
  ax.set_ylabel("eval top-1 (%)")
  ax.grid(alpha=0.3)
  ax.margins(y=0.2)
  if len(ax.get_lines()) > 1:
    ax.legend(fontsize=8)
  ax2.set_xlabel(f"{flops_unit} (multiply-adds) per image")
  ax2.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(5))
  ax2.set_ylabel("eval top-1 (%)")
  ax2.grid(alpha=0.3)
  ax2.margins(x=0.25, y=0.2)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def aggregate(runs: Sequence[Run], workdir: str, spec: str) -> list[dict[str, Any]]:
  """Writes results.csv, results.md and (with any rows) results.png in `workdir`; returns the rows.

  `spec` (the sweep config as given, e.g. 'configs/ablations/focal_levels.py:quickstart') titles
  the table and the plot.
  """
  rows = collect(runs, workdir)
  os.makedirs(workdir, exist_ok=True)
  write_csv(rows, os.path.join(workdir, RESULTS_CSV))
  with open(os.path.join(workdir, RESULTS_MD), "w") as f:
    f.write(markdown_table(rows, f"Sweep `{spec}`:"))
  if rows:
    plot(rows, runs, os.path.join(workdir, RESULTS_PNG), f"Sweep {spec}")
  return rows
