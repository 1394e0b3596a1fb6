"""A sweep as a SLURM job array: one array task per unfinished point, and the state of each point.

`submit` writes `<workdir>/slurm/sweep_<n>.sbatch` (the n-th submission) and submits it with
`--array=0-<k-1>%<max_parallel>`: task i runs `sweep.py --only <point i>` in the same sweep
workdir, so each point trains in `<workdir>/<point>` and is resumable there, and writes the
sweep's finished marker (result.json) as in a local sweep. Points that finished, and points still
pending or running in an earlier submission, are not submitted again: resubmitting the same command
reruns only what failed or was stopped. Every submission is recorded in
`<workdir>/slurm/submissions.jsonl` ({job, points}), from which `point_states` tells, with
`squeue`, each point's state: done, pending, running, failed (left the queue without a result) or
not submitted. Array task logs: `<workdir>/slurm/<job>_<task>.out`.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from typing import Sequence

from focalnet_jax.tools import sweep

SLURM_DIR = "slurm"
SUBMISSIONS = "submissions.jsonl"


class SlurmError(RuntimeError):
  """SLURM is not there, refuses the request, or was asked for something a sweep cannot be."""


def _run(cmd: Sequence[str]) -> subprocess.CompletedProcess:
  try:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60)
  except FileNotFoundError as e:
    raise SlurmError(f"{cmd[0]} is not on PATH: SLURM's client commands are not installed here. Run sweep.py "
                     "on a SLURM login node, or without --launcher slurm to train the points here one after "
                     "another.") from e


def check_cluster(partition: str | None) -> None:
  """Raises SlurmError unless SLURM answers and has `partition` (None: the cluster's default)."""
  for tool in ("sbatch", "squeue", "sinfo"):
    if shutil.which(tool) is None:
      _run([tool])  # raises the not-installed error
  out = _run(["sinfo", "-h", "-o", "%R"])
  if out.returncode != 0:
    raise SlurmError(f"SLURM does not answer (sinfo: {out.stderr.strip()[-300:]}). Check that slurm.conf is there "
                     "(/etc/slurm/slurm.conf or $SLURM_CONF) and slurmctld runs; for a one-node test cluster on "
                     "this machine: sudo bash scripts/slurm/local_cluster.sh up.")
  partitions = sorted(set(out.stdout.split()))
  if partition is not None and partition not in partitions:
    raise SlurmError(f"Partition {partition!r} does not exist on this cluster; it has {partitions}. Pass one of "
                     "them with --partition, or leave --partition out for the default.")


def _submissions(workdir: str) -> list[dict]:
  path = os.path.join(workdir, SLURM_DIR, SUBMISSIONS)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _queued() -> dict[str, str]:
  """{'<job>_<task>': state} of every array task in the queue (pending tasks listed one by one)."""
  out = _run(["squeue", "-h", "-r", "-o", "%i %T"])
  if out.returncode != 0:
    raise SlurmError(f"squeue failed: {out.stderr.strip()[-300:]}")
  return dict(line.split() for line in out.stdout.splitlines() if line.strip())


def point_states(workdir: str, names: Sequence[str]) -> dict[str, dict]:
  """{name: {'state', 'job', 'log'}}: state is done, pending, running, failed or not submitted; job
  the array task (<job>_<task>) of the point's latest submission, log its output file."""
  latest = {}
  for sub in _submissions(workdir):
    for i, name in enumerate(sub["points"]):
      latest[name] = f"{sub['job']}_{i}"
  queued = _queued() if latest else {}
  states = {}
  for name in names:
    task = latest.get(name)
    log = os.path.join(workdir, SLURM_DIR, f"{task}.out") if task else None
    if sweep.is_finished(workdir, name):
      state = "done"
    elif task is None:
      state = "not submitted"
    elif task in queued:
      state = "running" if queued[task] in ("RUNNING", "COMPLETING") else queued[task].lower()
    else:
      state = "failed"
    states[name] = {"state": state, "job": task, "log": log}
  return states


def _script(spec: str, workdir: str, points: Sequence[str], extra: Sequence[str]) -> str:
  """The array job: task i runs `sweep.py --only <points[i]>` with this interpreter."""
  sweep_py = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "sweep.py")
  command = [sys.executable, sweep_py, f"--config={spec}", f"--workdir={workdir}", "--report=false", *extra]
  return "\n".join([
      "#!/usr/bin/env bash",
      "# Written by sweep.py --launcher slurm: one array task per point below (submitted with --array).",
      "set -u",
      f"points=({' '.join(shlex.quote(p) for p in points)})",
      'task=${SLURM_ARRAY_TASK_ID:?"not an array task: submit this with sweep.py --launcher slurm"}',
      'if (( task >= ${#points[@]} )); then',
      '  echo "sweep: array task ${task}, but this submission has ${#points[@]} point(s) (${points[*]}):' +
      ' its --array must be 0-$((${#points[@]} - 1)); sweep.py --launcher slurm sets it." >&2',
      "  exit 2",
      "fi",
      'echo "sweep: point ${points[$task]} (array task ${SLURM_ARRAY_JOB_ID:-?}_${task},' +
      ' restart ${SLURM_RESTART_COUNT:-0}) on $(hostname)"',
      f'{" ".join(shlex.quote(c) for c in command)} --only="${{points[$task]}}"',
      "status=$?",
      "if (( status == 75 )); then  # stopped early (SIGTERM, preemption): requeue this task to resume",
      '  scontrol requeue "${SLURM_ARRAY_JOB_ID}_${task}"',
      "fi",
      'exit "${status}"',
      "",
  ])


def submit(spec: str, runs: Sequence[sweep.Run], workdir: str, extra: Sequence[str], *, max_parallel: int,
           partition: str | None, sbatch_args: Sequence[str]) -> dict:
  """Submits the unfinished, not queued points of `runs` as one job array; returns
  {'job', 'submitted', 'done', 'queued'} (job None when nothing needed submitting)."""
  if any(a == "--array" or a.startswith(("--array=", "-a")) for a in sbatch_args):
    raise SlurmError("--slurm_args must not set --array: sweep.py sets it to one task per unfinished point "
                     f"({len(runs)} in this sweep); use --max_parallel for the %N limit.")
  if max_parallel < 0:
    raise SlurmError(f"--max_parallel must be >= 0 (0: no limit), not {max_parallel}.")
  check_cluster(partition)
  workdir = os.path.abspath(workdir)
  path, arg = sweep.split_spec(spec)  # the tasks may start in another directory
  spec = os.path.abspath(path) + ("" if arg is None else f":{arg}")
  states = point_states(workdir, [r.name for r in runs])
  done = [n for n, s in states.items() if s["state"] == "done"]
  queued = {n: s["job"] for n, s in states.items() if s["state"] not in ("done", "failed", "not submitted")}
  todo = [r.name for r in runs if r.name not in done and r.name not in queued]
  result = {"job": None, "submitted": todo, "done": done, "queued": queued}
  if not todo:
    return result
  slurm_dir = os.path.join(workdir, SLURM_DIR)
  os.makedirs(slurm_dir, exist_ok=True)
  script = os.path.join(slurm_dir, f"sweep_{len(_submissions(workdir))}.sbatch")
  with open(script, "w") as f:
    f.write(_script(spec, workdir, todo, extra))
  array = f"0-{len(todo) - 1}" + (f"%{max_parallel}" if max_parallel else "")
  cmd = ["sbatch", "--parsable", f"--array={array}", f"--job-name=sweep-{os.path.basename(workdir)}",
         f"--output={os.path.join(slurm_dir, '%A_%a.out')}", "--open-mode=append", "--requeue"]
  cmd += ([f"--partition={partition}"] if partition else []) + list(sbatch_args) + [script]
  out = _run(cmd)
  if out.returncode != 0:
    raise SlurmError(f"sbatch refused the job array: {out.stderr.strip()[-500:]}")
  result["job"] = out.stdout.strip().split(";")[0]
  with open(os.path.join(slurm_dir, SUBMISSIONS), "a") as f:
    f.write(json.dumps({"job": result["job"], "points": todo}) + "\n")
  return result


def format_states(states: dict[str, dict]) -> str:
  """The states as a markdown table."""
  lines = ["| point | state | array task | log |", "|---|---|---|---|"]
  lines += [f"| {n} | {s['state']} | {s['job'] or ''} | {s['log'] or ''} |" for n, s in states.items()]
  return "\n".join(lines)
