"""A sweep as a SLURM job array (`sweep.py --launcher slurm`): one array task per point, a failing
point reported as failed and a resubmission that reruns only it; and the bad inputs (no sbatch, no
slurm.conf, an unknown partition, an array bigger than the sweep, a point still queued), each a
clear message that leaves every checkpoint as it was."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

import slurm_utils

SWEEP_PY = os.path.join(slurm_utils.ROOT, "sweep.py")

# Three tiny points on synthetic data; p2 fails (an invalid total_steps) while BREAK exists.
SWEEP_CONFIG = '''
import os
from configs import default

BREAK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "break_p2")


def get_config(arg=None):
  c = default.get_config()
  c.dataset = "synthetic"
  c.model.embed_dim, c.model.depths, c.model.patch_size, c.model.focal_levels = 8, (1,), 4, 1
  c.model.dtype = "float32"
  c.image_size, c.batch_size, c.eval_batch_size = 8, 8, 2000
  c.total_steps, c.warmup_epochs, c.log_every_steps, c.eval_every_steps = 2, 0.0, 1, 0
  return c


def get_sweep(arg=None):
  return [{"name": "p0", "overrides": {"seed": 0}}, {"name": "p1", "overrides": {"seed": 1}},
          {"name": "p2", "overrides": {"seed": 2, "total_steps": -2 if os.path.exists(BREAK) else 2}}]
'''


@pytest.fixture
def sweep_config(tmp_path):
  path = tmp_path / "tiny_sweep.py"
  path.write_text(SWEEP_CONFIG)
  return str(path)


def _sweep(config, workdir, *flags, env=None, check=True):
  out = subprocess.run([sys.executable, SWEEP_PY, f"--config={config}", f"--workdir={workdir}", "--launcher=slurm",
                        *flags], env=env or slurm_utils.job_env(str(os.path.dirname(workdir))), cwd=slurm_utils.ROOT,
                       capture_output=True, text=True, timeout=300)
  if check:
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  return out


def _job(out) -> str:
  return re.search(r"Submitted job array (\d+): ", out.stderr).group(1)


def _array_left_queue(job):
  return lambda: subprocess.run(["squeue", "-h", "-r", "-j", job], capture_output=True, text=True).stdout.strip() == ""


def _snapshot(workdir):
  """Every file under workdir's point directories with its size and mtime."""
  files = {}
  for dirpath, _, names in os.walk(workdir):
    if os.path.basename(dirpath) == "slurm" or dirpath == workdir:
      continue
    for n in names:
      st = os.stat(os.path.join(dirpath, n))
      files[os.path.join(dirpath, n)] = (st.st_size, st.st_mtime_ns)
  return files


@pytest.mark.slurm
@pytest.mark.skipif(slurm_utils.cluster_problem() is not None, reason=slurm_utils.cluster_problem() or "")
def test_job_array_reports_the_failed_point_and_a_resubmission_reruns_only_it(tmp_path, sweep_config):
  workdir = str(tmp_path / "sweep")
  open(os.path.join(tmp_path, "break_p2"), "w").close()
  out = _sweep(sweep_config, workdir, "--max_parallel=2")
  job = _job(out)
  assert f"Submitted job array {job}: p0, p1, p2" in out.stderr
  slurm_utils.wait_for(_array_left_queue(job), f"array {job}", 400, os.path.join(workdir, "slurm", f"{job}_0.out"), 2)
  report = _sweep(sweep_config, workdir, "--aggregate_only").stdout
  assert re.search(rf"\| p0 \| done \| {job}_0 \|", report) and re.search(rf"\| p1 \| done \| {job}_1 \|", report)
  assert re.search(rf"\| p2 \| failed \| {job}_2 \| .*{job}_2.out \|", report), report
  assert "total_steps" in slurm_utils.read(os.path.join(workdir, "slurm", f"{job}_2.out"))  # why it failed
  finished = _snapshot(workdir)

  os.remove(os.path.join(tmp_path, "break_p2"))
  out = _sweep(sweep_config, workdir, "--max_parallel=2")
  again = _job(out)
  assert f"Submitted job array {again}: p2." in out.stderr and "Finished already: ['p0', 'p1']" in out.stderr
  slurm_utils.wait_for(_array_left_queue(again), f"array {again}", 400,
                       os.path.join(workdir, "slurm", f"{again}_0.out"), 2)
  report = _sweep(sweep_config, workdir, "--aggregate_only").stdout
  assert re.search(rf"\| p2 \| done \| {again}_0 \|", report), report
  assert sorted(f for f in os.listdir(os.path.join(workdir, "slurm")) if f.startswith(f"{again}_")) == [f"{again}_0.out"]
  after = _snapshot(workdir)
  assert {f: after[f] for f in finished if "/p2/" not in f} == {f: v for f, v in finished.items() if "/p2/" not in f}
  assert "| `p2` |" in open(os.path.join(workdir, "results.md")).read()  # in the results table now


def _fake_finished_point(workdir):
  """A point directory with a checkpoint file, to check that bad input leaves it alone."""
  ckpt = os.path.join(workdir, "p0", "checkpoints", "2")
  os.makedirs(ckpt)
  with open(os.path.join(ckpt, "state"), "w") as f:
    f.write("weights")
  return _snapshot(workdir)


def test_no_sbatch_on_path_is_a_clear_error(tmp_path, sweep_config):
  workdir = str(tmp_path / "sweep")
  before = _fake_finished_point(workdir)
  env = dict(slurm_utils.job_env(str(tmp_path)), PATH=os.path.dirname(sys.executable))
  out = _sweep(sweep_config, workdir, env=env, check=False)
  assert out.returncode != 0
  assert "sbatch is not on PATH: SLURM's client commands are not installed here" in out.stderr, out.stderr[-2000:]
  assert _snapshot(workdir) == before and not os.path.exists(os.path.join(workdir, "slurm"))


def test_an_array_option_is_refused(tmp_path, sweep_config):
  workdir = str(tmp_path / "sweep")
  before = _fake_finished_point(workdir)
  out = _sweep(sweep_config, workdir, "--slurm_args=--array=0-9", check=False)
  assert out.returncode != 0 and "--slurm_args must not set --array: sweep.py sets it to one task per unfinished " \
                                 "point (3 in this sweep)" in out.stderr, out.stderr[-2000:]
  assert _snapshot(workdir) == before


needs_clients = pytest.mark.skipif(subprocess.run(["which", "sinfo"], capture_output=True).returncode != 0,
                                   reason="SLURM's client commands are not installed (local_cluster.sh up installs them)")


@needs_clients
def test_a_missing_slurm_conf_is_a_clear_error(tmp_path, sweep_config):
  workdir = str(tmp_path / "sweep")
  before = _fake_finished_point(workdir)
  env = dict(slurm_utils.job_env(str(tmp_path)), SLURM_CONF=str(tmp_path / "no" / "slurm.conf"))
  out = _sweep(sweep_config, workdir, env=env, check=False)
  assert out.returncode != 0 and "SLURM does not answer" in out.stderr and "slurm.conf" in out.stderr, out.stderr
  assert _snapshot(workdir) == before


@pytest.mark.slurm
@pytest.mark.skipif(slurm_utils.cluster_problem() is not None, reason=slurm_utils.cluster_problem() or "")
def test_an_unknown_partition_is_a_clear_error(tmp_path, sweep_config):
  workdir = str(tmp_path / "sweep")
  before = _fake_finished_point(workdir)
  out = _sweep(sweep_config, workdir, "--partition=nope", check=False)
  assert out.returncode != 0 and "Partition 'nope' does not exist on this cluster; it has [" in out.stderr, out.stderr
  assert _snapshot(workdir) == before


@pytest.mark.slurm
@pytest.mark.skipif(slurm_utils.cluster_problem() is not None, reason=slurm_utils.cluster_problem() or "")
def test_a_point_still_queued_is_not_submitted_twice_and_a_task_beyond_the_sweep_refuses(tmp_path, sweep_config):
  workdir = str(tmp_path / "sweep")
  out = _sweep(sweep_config, workdir, "--only=p0,p1", "--slurm_args=--hold")  # held: stays pending
  job = _job(out)
  try:
    out = _sweep(sweep_config, workdir, "--only=p0,p1")
    assert f"p0 is still in the queue as array task {job}_0: not submitted again" in out.stderr
    assert "Nothing to submit" in out.stderr
    assert re.search(rf"\| p1 \| pending \| {job}_1 \|", _sweep(sweep_config, workdir, "--aggregate_only").stdout)
  finally:
    subprocess.run(["scancel", job], check=False)
  # The array script run as a task index the submission does not have (sbatch --array=0-9 by hand).
  script = os.path.join(workdir, "slurm", "sweep_0.sbatch")
  task = subprocess.run(["bash", script], env=dict(os.environ, SLURM_ARRAY_TASK_ID="5"), capture_output=True,
                        text=True, timeout=60)
  assert task.returncode == 2
  assert "array task 5, but this submission has 2 point(s) (p0 p1): its --array must be 0-1" in task.stderr
  assert not os.path.exists(os.path.join(workdir, "p0")) and not os.path.exists(os.path.join(workdir, "p1"))
