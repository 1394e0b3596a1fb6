"""Ablation sweeps: expand a sweep config into runs and run them one by one.

A sweep config (configs/ablations/*.py) has `get_config(arg)` (the base) and `get_sweep(arg)`
(points: a name and dotted config overrides). Each point trains in `<workdir>/<name>`; a point is
finished when `<workdir>/<name>/result.json` exists (written only after training returns), so a
rerun skips finished points and resumes an interrupted one from its checkpoints.
`sweep_report.aggregate` then collects every point's metrics, size, cost and speed into
results.csv, results.md and results.png.

Points run in-process, one after another: the trainer keeps no state between calls (its jitted
functions are local; `jax.clear_caches()` drops their executables between points), so a point
needs no fresh interpreter, JAX starts once, a failing point is recorded and the sweep goes on, and
tests can inject a fake train function. For isolation on accelerators, or for parallel runs on a
cluster, `launch_commands` gives one `python train.py` command per point instead.
"""
from __future__ import annotations

import dataclasses
import difflib
import gc
import importlib.util
import json
import os
import shlex
import sys
import time
import traceback
import types
from typing import Any, Callable, Iterable, Sequence

import ml_collections
from absl import logging

from focalnet_jax import atomic

RESULT_FILE = "result.json"  # a point's "finished" marker: written only after training returns
COMMANDS_SH = "commands.sh"

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


def load_module(path: str) -> types.ModuleType:
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
  """Where point `name` of the sweep in `workdir` writes its result.json."""
  return os.path.join(workdir, name, RESULT_FILE)


def is_finished(workdir: str, name: str) -> bool:
  """Whether point `name` finished training (its result.json exists)."""
  return os.path.exists(result_path(workdir, name))


def stale_changes(workdir: str, run: Run) -> list[str]:
  """Why point `run`'s result.json does not hold the result of `run.config` (the fields, saved ->
  now, that change what it trains); [] when it does. A result is finished only for its own config."""
  from focalnet_jax.train import config_check

  with open(result_path(workdir, run.name)) as f:
    saved = json.load(f).get("config")
  if saved is None:
    return ["its result.json records no config (written by an older version), so it cannot be compared"]
  return [f"{k}: {old!r} -> {new!r}" for k, old, new in config_check.config_changes(saved, run.config)]


def _write_json(path: str, obj: Any) -> None:
  atomic.write_json(path, obj)  # a crash never leaves a half-written marker


def checkpoint_meta(point_dir: str) -> dict[str, Any] | None:
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
  SIGTERM or Ctrl-C (`preempted`), or a Ctrl-C between runs, stops the sweep, unfinished. Returns
  {'ran', 'skipped', 'failed', 'stopped', 'stale'} lists of names ('stale': finished under
  another config, refused).
  """
  train_fn = train_fn or _default_train_fn
  report: dict[str, list[str]] = {"ran": [], "skipped": [], "failed": [], "stopped": [], "stale": []}
  for i, run in enumerate(runs):
    try:
      status = _run_point(f"[{i + 1}/{len(runs)}]", run, workdir, train_fn)
    except KeyboardInterrupt:  # Ctrl-C outside the trainer's own handler (which saves and stops)
      logging.warning("Interrupted (Ctrl-C) at %s; rerun the same command to resume the sweep.", run.name)
      report["ran" if is_finished(workdir, run.name) else "stopped"].append(run.name)
      break
    report[status].append(run.name)
    if status == "stopped":
      break
  return report


def _run_point(counter: str, run: Run, workdir: str, train_fn: TrainFn) -> str:
  """Trains one point; returns 'ran', 'skipped', 'failed' or 'stopped' (SIGTERM or Ctrl-C)."""
  point_dir = os.path.join(workdir, run.name)
  if is_finished(workdir, run.name):
    changes = stale_changes(workdir, run)
    if changes:
      logging.error("%s %s finished under another config than this sweep's; its result is not reused or reported:"
                    "\n  %s\nTo run this config, pass another --workdir (or move %s away to rerun the point here).",
                    counter, run.name, "\n  ".join(changes), point_dir)
      return "stale"
    logging.info("%s %s: finished already, skipping.", counter, run.name)
    return "skipped"
  logging.info("%s %s: %s%s", counter, run.name, format_overrides(run.overrides) or "the base config",
               " (resuming)" if os.path.isdir(os.path.join(point_dir, "checkpoints")) else "")
  os.makedirs(point_dir, exist_ok=True)
  t0 = time.time()
  try:
    metrics = train_fn(run.config, point_dir)
  except Exception:  # noqa: BLE001 - one failed point must not lose the others
    logging.error("%s failed:\n%s", run.name, traceback.format_exc())
    return "failed"
  finally:
    gc.collect()
    _clear_jax_caches()
  if metrics.get("preempted"):
    logging.warning("%s was stopped (SIGTERM or Ctrl-C) before finishing; rerun the same command to resume it.",
                    run.name)
    return "stopped"
  meta = checkpoint_meta(point_dir) or {}
  _write_json(result_path(workdir, run.name), {  # atomic: the marker exists whole or not at all
      "name": run.name, "overrides": run.overrides, "metrics": metrics,
      "config": json.loads(run.config.to_json_best_effort()),  # finished for this config only
      "num_classes": meta.get("num_classes"), "wall_s": time.time() - t0, "finished_at": time.time(),
  })
  return "ran"


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
  """Writes `commands` as an executable shell script (commands.sh)."""
  atomic.write_text(path, "#!/bin/sh\n# One training run per sweep point; run from the repository root, in any "
                    "order or in parallel.\n" + "".join(c + "\n" for c in commands), mode=0o755)



def format_overrides(overrides: dict[str, Any]) -> str:
  """{'model.focal_levels': 0} -> 'focal_levels=0' (the 'model.' prefix dropped)."""
  return ", ".join(f"{k.removeprefix('model.')}={format_value(v)}" for k, v in overrides.items())
