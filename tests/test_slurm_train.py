"""Training under a real SLURM cluster through scripts/slurm/train.sbatch: two tasks (two JAX
processes with 4 CPU devices each, found by jax.distributed's SLURM detection) train like one
process with 8 devices, and a job stopped by `scancel --signal=TERM`, requeued, stopped again by a
real `scontrol requeue` and requeued ends with the same parameters, bit for bit, as one never
stopped. Needs a cluster (bash scripts/slurm/local_cluster.sh up); skipped without one."""
from __future__ import annotations

import os
import re
import subprocess
import time

import jax
import numpy as np
import pytest

import slurm_utils
from focalnet_jax import checkpoint
from test_multiprocess import OVERRIDES, _launch, _outputs

pytestmark = slurm_utils.requires_cluster()

WORKER = os.path.join(slurm_utils.ROOT, "tests", "slurm_worker.py")
TOTAL = 40  # steps: long enough that both stops land inside the run


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("jax_cache"))


def _submit(workdir: str, log: str, cache: str, **overrides) -> str:
  """A 2-task train.sbatch job (both tasks on the one node) on the tests' in-memory data."""
  config = [f"--config={os.path.join(slurm_utils.ROOT, 'configs', 'default.py')}", f"--workdir={workdir}"]
  config += [f"--config.{k}={v}" for k, v in {**OVERRIDES, **overrides}.items()]
  env = slurm_utils.job_env(cache, TRAIN_SCRIPT=WORKER, JAX_NUM_CPU_DEVICES="4")
  return slurm_utils.sbatch(["--ntasks=2", "--ntasks-per-node=2", f"--output={log}", "--job-name=focalnet-test",
                             slurm_utils.TRAIN_SBATCH, *config], env)


def _params(workdir: str):
  params, _ = checkpoint.load_params(os.path.join(workdir, "checkpoints"))
  return params


@pytest.fixture(scope="module")
def straight(tmp_path_factory, cache):
  """An uninterrupted 2-task run of TOTAL steps: (workdir, log)."""
  root = tmp_path_factory.mktemp("straight")
  workdir, log = str(root / "run"), str(root / "job.log")
  job = _submit(workdir, log, cache, total_steps=TOTAL)
  slurm_utils.wait_done(job, 400, log)
  return workdir, log


def test_two_slurm_tasks_train_like_one_process(tmp_path, straight):
  single = _launch(str(tmp_path / "single"), 8, total_steps=TOTAL)
  (out,) = _outputs([single])
  assert single.returncode == 0, out[-3000:]
  workdir, log = straight
  text = slurm_utils.read(log)
  assert "Process 1/2, 4 local / 8 global devices" in text, text[-3000:]  # SLURM gave each its index
  assert "training exited 0" in text, text[-3000:]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6),
               _params(workdir), _params(str(tmp_path / "single")))


def _saved_steps(text: str) -> list[int]:
  return [int(s) for s in re.findall(r"saved step (\d+) to", text)]


def _stop_and_release(job: str, log: str, stop: list[str], started: int) -> int:
  """Once both processes of the job's `started`-th start compiled their step, runs `stop`, waits
  until the job is pending again (requeued) and releases it (SLURM holds a requeued job for two
  minutes before it may start again; started within a second of its requeue, slurmd refuses it). Returns the step both processes saved."""
  compiled = lambda: slurm_utils.read(log).count("Compiled the train step") >= 2 * started
  slurm_utils.wait_for(compiled, f"start {started} to compile", 300, log)
  before = len(_saved_steps(slurm_utils.read(log)))
  subprocess.run(stop, check=True, timeout=30)
  slurm_utils.wait_for(lambda: slurm_utils.job_state(job) == "PENDING", "the requeue", 120, log)
  time.sleep(3)  # started within the second of its requeue, slurmd refuses the job ("credential revoked")
  subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, timeout=30)
  saved = _saved_steps(slurm_utils.read(log))[before:]
  assert len(saved) == 2 and saved[0] == saved[1], slurm_utils.read(log)[-4000:]  # both, the same step
  return saved[0]


def test_sigterm_and_scontrol_requeue_resume_to_the_same_parameters(tmp_path, cache, straight):
  workdir, log = str(tmp_path / "run"), str(tmp_path / "job.log")
  job = _submit(workdir, log, cache, total_steps=TOTAL)
  first = _stop_and_release(job, log, ["scancel", "--signal=TERM", job], started=1)
  text = slurm_utils.read(log)
  assert "training exited 75" in text and f"requeueing job {job}" in text, text[-3000:]
  second = _stop_and_release(job, log, ["scontrol", "requeue", job], started=2)
  slurm_utils.wait_done(job, 400, log)
  text = slurm_utils.read(log)
  assert 0 < first < second < TOTAL, (first, second)
  assert f"job {job} restart 2: training exited 0" in text, text[-3000:]
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               _params(workdir), _params(straight[0]))
