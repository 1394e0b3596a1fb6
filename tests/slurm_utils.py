"""Shared by the SLURM tests: whether a cluster answers, submitting a job with this worktree's
interpreter and PYTHONPATH, and waiting for it (`squeue`)."""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import time

import pytest

import train_utils

ROOT = train_utils.ROOT
TRAIN_SBATCH = os.path.join(ROOT, "scripts", "slurm", "train.sbatch")


@functools.cache
def cluster_problem() -> str | None:
  """Why no SLURM cluster can run the tests here, or None when `sinfo` answers. Where
  FOCALNET_REQUIRE_SLURM=1 (CI, which starts a cluster) a missing cluster is an error, not a skip."""
  problem = _cluster_problem()
  if problem and os.environ.get("FOCALNET_REQUIRE_SLURM") == "1":
    raise RuntimeError(f"FOCALNET_REQUIRE_SLURM=1 but {problem}")
  return problem


def _cluster_problem() -> str | None:
  if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
    return "no SLURM client commands (sinfo, sbatch) on PATH; start one: bash scripts/slurm/local_cluster.sh up"
  try:
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
  except subprocess.TimeoutExpired:
    return "sinfo did not answer in 20 s; start a cluster: bash scripts/slurm/local_cluster.sh up"
  if out.returncode != 0 or not out.stdout.strip():
    return (f"SLURM does not answer (sinfo: {out.stderr.strip()[-200:]!r}); start a cluster: "
            "bash scripts/slurm/local_cluster.sh up")
  return None


def requires_cluster():
  """Marks a test `slurm` and skips it, with the reason, when no cluster answers."""
  problem = cluster_problem()
  return [pytest.mark.slurm, pytest.mark.skipif(problem is not None, reason=problem or "")]


def job_env(cache_dir: str, **extra: str) -> dict[str, str]:
  """The environment a job inherits (sbatch exports it): this worktree first on PYTHONPATH, the
  tests' JAX settings, and a persistent compilation cache shared by the module's jobs."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]), PYTHON=sys.executable,
             JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", JAX_COMPILATION_CACHE_DIR=cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  env.pop("XLA_FLAGS", None)
  env.pop("JAX_NUM_CPU_DEVICES", None)
  env.update(extra)
  return env


def sbatch(args: list[str], env: dict[str, str], cwd: str = ROOT) -> str:
  """Submits; returns the job id."""
  out = subprocess.run(["sbatch", "--parsable", *args], env=env, cwd=cwd, capture_output=True, text=True,
                       timeout=60)
  assert out.returncode == 0, out.stderr
  return out.stdout.strip().split(";")[0]


def job_state(job: str) -> str | None:
  """The job's state in the queue (PENDING, RUNNING, ...), None once it has left the queue."""
  out = subprocess.run(["squeue", "-h", "-r", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=30)
  states = out.stdout.split()
  return states[0] if out.returncode == 0 and states else None


def wait_for(predicate, what: str, timeout: float, log: str | None = None, poll: float = 0.5):
  """Polls `predicate` until it returns a true value (returned) or `timeout` seconds pass."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    value = predicate()
    if value:
      return value
    time.sleep(poll)
  tail = read(log)[-4000:] if log else ""
  raise AssertionError(f"Timed out after {timeout:.0f}s waiting for {what}.\n{tail}")


def wait_done(job: str, timeout: float, log: str | None = None) -> None:
  """Waits until the job has left the queue (cancelling it on timeout)."""
  try:
    wait_for(lambda: job_state(job) is None, f"job {job} to finish", timeout, log, poll=1.0)
  except AssertionError:
    subprocess.run(["scancel", job], check=False)
    raise


def read(path: str) -> str:
  if not os.path.exists(path):
    return ""
  with open(path, errors="replace") as f:
    return f.read()
