r"""Runs an ablation sweep (configs/ablations/*.py): one training run per point, then a results table.

  python sweep.py --config configs/ablations/focal_levels.py:quickstart --workdir runs/sweep_fl
  python sweep.py --config configs/ablations/focal_levels.py:quickstart --workdir runs/sweep_fl --only fl0,fl3
  python sweep.py --config configs/ablations/focal_levels.py --workdir runs/sweep_fl --print_commands
  python sweep.py --config configs/ablations/focal_levels.py:quickstart --workdir runs/sweep_fl --aggregate_only

Points run one after another in this process, each in <workdir>/<point>; finished points
(<workdir>/<point>/result.json) are skipped and an interrupted one resumes from its checkpoints,
so rerunning the same command continues a sweep. --config.x=y overrides apply to every point.
At the end, <workdir>/results.{csv,md,png} hold every point's metrics, params, GFLOPs and img/s.
--print_commands instead prints (and writes to <workdir>/commands.sh) one train.py command per
point, for a cluster; --aggregate_only then collects their results.

On a SLURM cluster, --launcher slurm submits the unfinished points as one job array (one task per
point, each in its own <workdir>/<point>; --max_parallel caps how many run at once) and returns;
the same command again submits only what failed or was stopped, and with --aggregate_only it
reports what finished and which points are pending, running or failed (see docs/cluster.md):
  python sweep.py --config configs/ablations/focal_levels.py --workdir /shared/sweep_fl \
      --launcher slurm --max_parallel 2 --slurm_args="--time=2-00:00:00 --gpus=8"
"""
from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from focalnet_jax.train import runlog
from focalnet_jax.train.stopping import PREEMPTED_EXIT_CODE

_CONFIG = config_flags.DEFINE_config_file("config", None, "Sweep config file[:quickstart].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The sweep's directory: one subdirectory per point.")
_ONLY = flags.DEFINE_list("only", None, "Comma-separated point names to run (default: all).")
_PRINT = flags.DEFINE_bool("print_commands", False, "Print one train.py command per point instead of training.")
_AGGREGATE = flags.DEFINE_bool("aggregate_only", False, "Only collect the results already in --workdir.")
_LAUNCHER = flags.DEFINE_enum("launcher", "local", ["local", "slurm"],
                              "local: train the points here, one after another; slurm: submit a job array.")
_MAX_PARALLEL = flags.DEFINE_integer("max_parallel", 0, "slurm: at most this many points at once (0: no limit).")
_PARTITION = flags.DEFINE_string("partition", None, "slurm: the partition (default: the cluster's default).")
_SLURM_ARGS = flags.DEFINE_string("slurm_args", "", "slurm: more sbatch options, e.g. '--time=1:00:00 --gpus=1'.")
_REPORT = flags.DEFINE_bool("report", True, "Write results.{csv,md,png} at the end (array tasks leave it to "
                            "the report step).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  runlog.quiet_library_logs()
  from focalnet_jax.tools import sweep
  from focalnet_jax.train import config_check

  config_check.check_sequence_flags(sys.argv)  # --config.model.depths=3 would build one-stage points

  spec = config_flags.get_config_filename(flags.FLAGS["config"])
  _, points = sweep.load_sweep(spec)
  runs = sweep.expand(_CONFIG.value, points, _ONLY.value)  # the base carries the --config.x=y overrides
  workdir = _WORKDIR.value
  os.makedirs(workdir, exist_ok=True)
  base_overrides = config_flags.get_override_values(flags.FLAGS["config"])
  extra = [f"--config.{k}={sweep.format_value(v)}" for k, v in base_overrides.items()]
  if _LAUNCHER.value == "slurm" and not _AGGREGATE.value:
    _submit(spec, runs, workdir, extra)
    return
  if _PRINT.value:
    commands = sweep.launch_commands(spec, runs, workdir, extra)
    sweep.write_commands(os.path.join(workdir, sweep.COMMANDS_SH), commands)
    print("\n".join(commands))
    return
  report = None
  if not _AGGREGATE.value:
    report = sweep.run_sweep(runs, workdir)
  if _REPORT.value:
    _report(spec, points, workdir)
  if report and report["stale"]:
    logging.error("Points %s finished under another config (see above) and were neither reused nor rerun: "
                  "pass another --workdir for this config.", report["stale"])
  if report and (report["failed"] or report["stopped"] or report["stale"]):
    logging.error("Unfinished points: failed %s, stopped %s; rerun the same command to retry or resume them.",
                  report["failed"], report["stopped"])
    # Like train.py: a sweep stopped early (and nothing failed) exits 75, so schedulers requeue it.
    sys.exit(1 if report["failed"] or report["stale"] else PREEMPTED_EXIT_CODE)


def _submit(spec, runs, workdir, extra) -> None:
  """--launcher slurm: submits the points that need running as a job array."""
  import shlex

  from focalnet_jax.tools import sweep_slurm

  try:
    result = sweep_slurm.submit(spec, runs, workdir, extra, max_parallel=_MAX_PARALLEL.value,
                                partition=_PARTITION.value, sbatch_args=shlex.split(_SLURM_ARGS.value))
  except sweep_slurm.SlurmError as e:
    sys.exit(f"sweep.py: {e}")  # what is wrong and how to fix it; nothing was submitted
  for name, task in result["queued"].items():
    logging.warning("%s is still in the queue as array task %s: not submitted again.", name, task)
  logging.info("Finished already: %s.", result["done"] or "none")
  if result["job"]:
    logging.info("Submitted job array %s: %s. Logs: %s/%s/<job>_<task>.out; results and states: the same command "
                 "with --aggregate_only.", result["job"], ", ".join(result["submitted"]), workdir,
                 sweep_slurm.SLURM_DIR)
  else:
    logging.info("Nothing to submit.")


def _report(spec, points, workdir) -> None:
  """Writes and prints the results table; with --launcher slurm, also each point's state."""
  from focalnet_jax.tools import sweep, sweep_report

  all_runs = sweep.expand(_CONFIG.value, points)  # the table covers every point with results
  rows = sweep_report.aggregate(all_runs, workdir, spec)
  with open(os.path.join(workdir, sweep_report.RESULTS_MD)) as f:
    print(f.read())
  logging.info("%d point(s) with results; wrote %s/results.{csv,md,png}.", len(rows), workdir)
  if _LAUNCHER.value == "slurm":
    from focalnet_jax.tools import sweep_slurm

    try:
      states = sweep_slurm.point_states(os.path.abspath(workdir), [r.name for r in all_runs])
    except sweep_slurm.SlurmError as e:  # e.g. reporting on a machine outside the cluster
      logging.warning("No point states: %s", e)
      return
    print(sweep_slurm.format_states(states))


if __name__ == "__main__":
  app.run(main)
