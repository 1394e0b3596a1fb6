"""Ablation sweeps: expansion, skip/resume, launch commands, aggregation, and every ablation config."""
from __future__ import annotations

import csv
import glob
import json
import os
import signal
import shlex
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

import train_utils
from configs import focalnet_t, quickstart
from focalnet_jax.tools import summary, sweep, sweep_report
from focalnet_jax.train import state as train_state

ROOT = train_utils.ROOT
ABLATIONS = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "ablations", "*.py"))
                   if os.path.basename(p) not in ("__init__.py", "common.py"))
FL = os.path.join(ROOT, "configs", "ablations", "focal_levels.py")


def without(d: dict, *keys: str) -> dict:
  """A nested to_dict() copy without the dotted `keys`."""
  d = json.loads(json.dumps(d, default=str))
  for key in keys:
    *path, last = key.split(".")
    target = d
    for p in path:
      target = target[p]
    target.pop(last)
  return d


def runs_of(spec: str, only=None):
  base, points = sweep.load_sweep(spec)
  return sweep.expand(base, points, only)


# --- expansion ------------------------------------------------------------------------------


@pytest.mark.parametrize("arg,reference", [("", focalnet_t), (":quickstart", quickstart)])
def test_focal_levels_expand_to_one_run_per_level(arg, reference):
  runs = runs_of(FL + arg)
  assert [r.name for r in runs] == ["fl0", "fl1", "fl2", "fl3", "fl4"]
  ref = reference.get_config().to_dict()
  for level, run in enumerate(runs):
    assert run.overrides == {"model.focal_levels": level}
    assert run.config.model.focal_levels == level
    # Everything else is the reference config's: the quickstart switch keeps its data, size, recipe.
    assert without(run.config.to_dict(), "model.focal_levels") == without(ref, "model.focal_levels")
  if arg:
    assert runs[0].config.dataset == "digits" and runs[0].config.image_size == quickstart.get_config().image_size
  else:
    assert runs[0].config.dataset == "imagenet2012" and runs[0].config.image_size == 224


def test_quickstart_specific_values_and_only():
  big = {r.name: r for r in runs_of(os.path.join(ROOT, "configs/ablations/depths.py"))}
  small = {r.name: r for r in runs_of(os.path.join(ROOT, "configs/ablations/depths.py:quickstart"))}
  assert big["deeper_thinner"].config.model.depths == (3, 3, 16, 3) and big["deeper_thinner"].config.model.embed_dim == 64
  assert small["deeper_thinner"].config.model.depths == (2, 3, 2) and small["deeper_thinner"].config.model.embed_dim == 24
  assert small["baseline"].config.model.depths == quickstart.get_config().model.depths
  assert [r.name for r in runs_of(FL + ":quickstart", only=["fl3", "fl0"])] == ["fl0", "fl3"]  # sweep order
  with pytest.raises(ValueError, match="fl9"):
    runs_of(FL, only=["fl9"])
  with pytest.raises(ValueError, match="Unknown ablation config arg"):
    sweep.load_sweep(FL + ":quickstrat")


def test_unknown_override_field_is_an_error():
  base, _ = sweep.load_sweep(FL)
  with pytest.raises(KeyError, match="focal_levels"):
    sweep.expand(base, [{"name": "x", "overrides": {"model.focal_level": 1}}])
  with pytest.raises(ValueError, match="unique"):
    sweep.expand(base, [{"name": "x", "overrides": {}}] * 2)


# --- running ----------------------------------------------------------------------------------


class FakeTrain:
  """Records calls; returns metrics that depend on the focal level; can fail or be preempted."""

  def __init__(self, fail=(), preempt=()):
    self.calls, self.fail, self.preempt = [], set(fail), set(preempt)

  def __call__(self, config, workdir):
    name = os.path.basename(workdir)
    self.calls.append((name, config.model.focal_levels, os.path.isdir(os.path.join(workdir, "checkpoints"))))
    if name in self.fail:
      raise RuntimeError("boom")
    return {"top1": 0.5 + 0.1 * config.model.focal_levels, "top5": 0.9, "loss": 1.0, "step": 10.0,
            "preempted": float(name in self.preempt)}


def test_run_sweep_skips_finished_and_resumes_interrupted(tmp_path):
  runs = runs_of(FL + ":quickstart", only=["fl0", "fl1", "fl2", "fl3"])
  workdir = str(tmp_path)
  os.makedirs(tmp_path / "fl0")
  fl0 = {"metrics": {"top1": 0.1}, "config": json.loads(runs[0].config.to_json_best_effort())}
  (tmp_path / "fl0" / "result.json").write_text(json.dumps(fl0))
  os.makedirs(tmp_path / "fl1" / "checkpoints")  # interrupted: checkpoints, no result.json
  fake = FakeTrain(fail={"fl2"})
  report = sweep.run_sweep(runs, workdir, fake)
  assert [c[:2] for c in fake.calls] == [("fl1", 1), ("fl2", 2), ("fl3", 3)]
  assert fake.calls[0][2]  # fl1 ran in its own workdir, where its checkpoints are
  assert report == {"ran": ["fl1", "fl3"], "skipped": ["fl0"], "failed": ["fl2"], "stopped": [], "stale": []}
  assert json.loads((tmp_path / "fl0" / "result.json").read_text()) == fl0  # untouched
  done = json.loads((tmp_path / "fl3" / "result.json").read_text())
  assert done["overrides"] == {"model.focal_levels": 3} and done["metrics"]["top1"] == pytest.approx(0.8)
  assert not (tmp_path / "fl2" / "result.json").exists()

  # A rerun only retries the failed point; a preempted point stops the sweep without a marker.
  fake = FakeTrain(preempt={"fl2"})
  report = sweep.run_sweep(runs, workdir, fake)
  assert [c[0] for c in fake.calls] == ["fl2"] and report["stopped"] == ["fl2"]
  assert not (tmp_path / "fl2" / "result.json").exists()


def test_a_point_finished_under_another_config_is_neither_reused_nor_reported(tmp_path):
  runs = runs_of(FL + ":quickstart", only=["fl0", "fl1"])
  sweep.run_sweep(runs, str(tmp_path), FakeTrain())
  changed = runs_of(FL + ":quickstart", only=["fl0", "fl1"])
  for run in changed:
    run.config.base_lr *= 2  # the base config changed between the two sweeps
  fake = FakeTrain()
  report = sweep.run_sweep(changed, str(tmp_path), fake)
  assert fake.calls == [] and report["stale"] == ["fl0", "fl1"] and report["skipped"] == []
  assert sweep.stale_changes(str(tmp_path), changed[0]) == [f"base_lr: {runs[0].config.base_lr!r} -> "
                                                            f"{changed[0].config.base_lr!r}"]
  assert sweep_report.collect_row(changed[0], str(tmp_path)) is None  # never beside the new results
  assert sweep_report.collect_row(runs[0], str(tmp_path))["status"] == "done"
  # A harmless change (logging) still reuses the result.
  runs[0].config.log_every_steps += 1
  assert sweep.stale_changes(str(tmp_path), runs[0]) == []


class CtrlCAfter(FakeTrain):
  """A point whose training returns, then a real Ctrl-C (SIGINT) outside the trainer's handler."""

  def __init__(self, name):
    super().__init__()
    self.name = name

  def __call__(self, config, workdir):
    metrics = super().__call__(config, workdir)
    if os.path.basename(workdir) == self.name:
      os.kill(os.getpid(), signal.SIGINT)  # delivered before the next bytecode: inside run_sweep
    return metrics


def test_ctrl_c_outside_the_trainer_stops_the_sweep_and_a_rerun_resumes(tmp_path, ctrl_c):
  runs = runs_of(FL + ":quickstart", only=["fl0", "fl1", "fl2"])
  fake = CtrlCAfter("fl0")
  report = sweep.run_sweep(runs, str(tmp_path), fake)
  assert [c[0] for c in fake.calls] == ["fl0"]  # the sweep stopped: fl1 never started
  assert report["stopped"] == ["fl0"] and not report["ran"]
  assert not (tmp_path / "fl0" / "result.json").exists()  # the point's marker was never half-written
  assert not list(tmp_path.glob("fl0/*.tmp"))
  fake = FakeTrain()
  report = sweep.run_sweep(runs, str(tmp_path), fake)  # rerunning the same command finishes the sweep
  assert [c[0] for c in fake.calls] == ["fl0", "fl1", "fl2"] and report["ran"] == ["fl0", "fl1", "fl2"]


# --- launch commands --------------------------------------------------------------------------


def parse_train_command(command: str):
  """The config train.py would build from `command` (same flags, lock_config=True)."""
  argv = shlex.split(command)
  assert argv[:2] == ["python", "train.py"]
  argv = ["train.py", *argv[2:]]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, flag_values=fv, lock_config=True, sys_argv=argv)
  flags.DEFINE_string("workdir", None, "", flag_values=fv)
  fv(argv)
  return fv.config, fv.workdir


@pytest.mark.parametrize("name", ["depths.py:quickstart", "components.py", "focal_levels.py:quickstart"])
def test_launch_commands_rebuild_each_point_config(name, monkeypatch):
  monkeypatch.chdir(ROOT)  # commands run from the repository root
  spec = f"configs/ablations/{name}"
  base, points = sweep.load_sweep(spec)
  base.seed = 7  # a base override, passed on to every command
  runs = sweep.expand(base, points)
  commands = sweep.launch_commands(spec, runs, "runs/sw", ["--config.seed=7"])
  assert len(commands) == len(runs)
  for run, command in zip(runs, commands):
    config, workdir = parse_train_command(command)
    assert workdir == os.path.join("runs/sw", run.name)
    assert config.to_dict() == run.config.to_dict()


def test_cli_print_commands_writes_commands_sh(tmp_path):
  out = subprocess.run(
      [sys.executable, "sweep.py", "--config=configs/ablations/depths.py:quickstart", f"--workdir={tmp_path}",
       "--print_commands", "--only=baseline,deeper_thinner"],
      cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
  lines = out.stdout.strip().splitlines()
  assert len(lines) == 2 and "--config.model.embed_dim=24" in lines[1] and "'--config.model.depths=(2,3,2)'" in lines[1]
  assert (tmp_path / "commands.sh").read_text().strip().splitlines()[-2:] == lines
  assert not (tmp_path / "baseline").exists()  # nothing trained


def test_cli_refuses_a_bare_number_for_a_per_stage_field(tmp_path):
  out = subprocess.run(
      [sys.executable, "sweep.py", "--config=configs/ablations/depths.py:quickstart", f"--workdir={tmp_path}",
       "--print_commands", "--config.model.depths=3"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode != 0 and "model.depths takes one value per stage" in out.stderr, out.stderr[-2000:]
  assert not (tmp_path / "commands.sh").exists()


# --- aggregation ------------------------------------------------------------------------------


def write_point(workdir, name, top1, rates, finished=True, ema=None, runs=None):
  d = os.path.join(workdir, name)
  os.makedirs(d, exist_ok=True)
  with open(os.path.join(d, "metrics.jsonl"), "w") as f:
    for i, r in enumerate(rates):
      f.write(json.dumps({"step": 10 * (i + 1), "split": "train", "loss": 1.0, "img_per_s": r}) + "\n")
    f.write(json.dumps({"step": 40, "split": "eval", "top1": top1 - 0.05, "top5": 0.9, "loss": 0.7}) + "\n")
  if finished:
    metrics = {"top1": top1, "top5": 0.99, "loss": 0.25, "step": 40.0, "preempted": 0.0}
    if ema is not None:
      metrics["ema_top1"] = ema
    with open(os.path.join(d, "result.json"), "w") as f:
      config = next(r.config for r in runs if r.name == name)  # a result holds the config it was run with
      json.dump({"name": name, "metrics": metrics, "num_classes": 10, "wall_s": 120.0,
                 "config": json.loads(config.to_json_best_effort())}, f)


def test_aggregate_rows_table_and_plot(tmp_path):
  runs = runs_of(FL + ":quickstart")
  workdir = str(tmp_path)
  write_point(workdir, "fl3", 0.97, [100, 300, 200], ema=0.975, runs=runs)
  write_point(workdir, "fl0", 0.91, [400, 500], runs=runs)
  write_point(workdir, "fl1", 0.93, [50], finished=False)  # running: only metrics.jsonl so far
  rows = sweep_report.aggregate(runs, workdir, "configs/ablations/focal_levels.py:quickstart")
  assert [r["name"] for r in rows] == ["fl0", "fl1", "fl3"]  # sweep order; fl2 and fl4 have nothing

  by = {r["name"]: r for r in rows}
  assert by["fl3"]["top1"] == pytest.approx(0.97) and by["fl3"]["img_per_s"] == pytest.approx(200)
  assert by["fl0"]["img_per_s"] == pytest.approx(450) and by["fl0"]["status"] == "done"
  assert by["fl1"]["top1"] == pytest.approx(0.88) and by["fl1"]["status"].startswith("step 40/")
  model, _ = train_state.build_model(runs[3].config, 10)
  assert by["fl3"]["params"] == summary.count_params(model)
  assert by["fl3"]["gflops"] == pytest.approx(summary.count_macs(model, 16) / 1e9)
  assert by["fl3"]["params"] > by["fl0"]["params"]

  with open(tmp_path / "results.csv") as f:
    table = list(csv.DictReader(f))
  assert [r["name"] for r in table] == ["fl0", "fl1", "fl3"]
  assert [r["model.focal_levels"] for r in table] == ["0", "1", "3"]
  assert float(table[2]["top1"]) == pytest.approx(0.97) and float(table[2]["ema_top1"]) == pytest.approx(0.975)
  assert table[0]["ema_top1"] == ""

  md = (tmp_path / "results.md").read_text().splitlines()
  header = [c.strip() for c in md[2].strip("|").split("|")]
  assert header[:6] == ["point", "overrides", "top-1 (%)", "top-5 (%)", "eval loss", "EMA top-1 (%)"]
  assert "status" in header and md[3].startswith("|---|---|---:")
  body = [[c.strip() for c in line.strip("|").split("|")] for line in md[4:]]
  assert [r[0] for r in body] == ["`fl0`", "`fl1`", "`fl3`"]
  assert body[2][1] == "focal_levels=3" and body[2][2] == "97.00" and body[2][5] == "97.50"
  assert body[0][header.index("train img/s")] == "450" and body[0][header.index("minutes")] == "2.0"

  assert_drawn(tmp_path / "results.png")
  # The plot: top-1 (and EMA top-1 where present) against the swept level, and top-1 against cost.
  fig = sweep_report.results_figure(rows, runs, "t")
  by_level, by_cost = fig.get_axes()
  assert by_level.get_xlabel() == "focal_levels" and "MFLOPs (multiply-adds)" in by_cost.get_xlabel()
  top1, ema = by_level.get_lines()
  np.testing.assert_allclose(top1.get_xdata(), [0, 1, 3])
  np.testing.assert_allclose(top1.get_ydata(), [91, 88, 97])
  np.testing.assert_allclose(ema.get_ydata(), [np.nan, np.nan, 97.5])
  assert not by_cost.get_lines()  # fl1's class count (hence its cost) is unknown until it checkpoints
  finished = [by["fl0"], by["fl3"]]
  (cost,) = sweep_report.results_figure(finished, runs, "t").get_axes()[1].get_lines()
  np.testing.assert_allclose(cost.get_xdata(), [1e3 * r["gflops"] for r in finished])
  np.testing.assert_allclose(cost.get_ydata(), [91, 97])


def assert_drawn(png):
  """The PNG holds a picture, not a blank canvas."""
  from PIL import Image

  pixels = np.asarray(Image.open(png).convert("L"), np.float32)
  assert pixels.std() > 5 and (pixels < 128).mean() > 0.002


def test_aggregate_categorical_sweep(tmp_path):
  runs = runs_of(os.path.join(ROOT, "configs/ablations/components.py:quickstart"))
  for name, acc in (("baseline", 0.95), ("no_gating", 0.9), ("additive", 0.85)):
    write_point(str(tmp_path), name, acc, [100], runs=runs)
  rows = sweep_report.aggregate(runs, str(tmp_path), "components")
  assert [r["overrides"] for r in rows] == ["", "use_gating=False", "interaction=add"]
  assert "| `baseline` | (base) |" in (tmp_path / "results.md").read_text()
  assert_drawn(tmp_path / "results.png")
  # No numeric axis: the points are named along x.
  by_name = sweep_report.results_figure(rows, runs, "components").get_axes()[0]
  assert [t.get_text() for t in by_name.get_xticklabels()] == ["baseline", "no_gating", "additive"]
  np.testing.assert_allclose(by_name.get_lines()[0].get_ydata(), [95, 90, 85])


def test_aggregate_counts_a_resumed_runs_relogged_steps_once(tmp_path):
  # A run checkpointed at step 10, logged steps 20-30 (and evaluated at 30), was killed, and
  # resumed from step 10: it re-logs steps 20 and 30 with new values, then goes on to step 40.
  d = tmp_path / "fl2"
  d.mkdir()
  first = [(10, 100), (20, 200), (30, 300)]
  again = [(20, 900), (30, 1000), (40, 1100)]
  with open(d / "metrics.jsonl", "w") as f:
    for step, rate in first:
      f.write(json.dumps({"step": step, "split": "train", "loss": 1.0, "img_per_s": rate}) + "\n")
    f.write(json.dumps({"step": 30, "split": "eval", "top1": 0.5, "top5": 0.9, "loss": 0.9}) + "\n")
    for step, rate in again:
      f.write(json.dumps({"step": step, "split": "train", "loss": 1.0, "img_per_s": rate}) + "\n")
      if step == 30:
        f.write(json.dumps({"step": 30, "split": "eval", "top1": 0.6, "top5": 0.95, "loss": 0.8}) + "\n")
    f.write('{"step": 50, "split": "tr')  # the last line of a run killed mid-write
  (row,) = sweep_report.aggregate(runs_of(FL + ":quickstart"), str(tmp_path), "fl")
  # Steps 10, 20, 30, 40 once each, with the later values: 100, 900, 1000, 1100.
  assert row["img_per_s"] == pytest.approx(950)
  assert row["step"] == 30 and row["top1"] == pytest.approx(0.6) and row["loss"] == pytest.approx(0.8)


# --- every ablation config ----------------------------------------------------------------------


@pytest.mark.parametrize("path", ABLATIONS, ids=lambda p: os.path.basename(p)[:-3])
def test_ablation_config_points_build_their_models(path):
  with open(path) as f:
    assert "python sweep.py --config configs/ablations/" in f.read()  # the docstring says how to run it
  for arg, num_classes in (("", 1000), (":quickstart", 10)):
    runs = runs_of(path + arg)
    assert len(runs) >= 2
    for run in runs:
      model, _ = train_state.build_model(run.config, num_classes)
      model.check_image_size(run.config.image_size, run.config.image_size)
      for key, value in run.overrides.items():  # each swept value reaches the model
        assert getattr(model, key.removeprefix("model.")) == value, (run.name, key)
      size = model.stride  # parameter shapes depend on neither the resolution nor the conv impl
      model = model.with_execution(depthwise="xla")  # traces one op per level, not k*k shifts
      shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))
      assert shapes["params"]["head"]["kernel"].shape == (model.num_features, num_classes)
