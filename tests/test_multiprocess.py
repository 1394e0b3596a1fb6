"""Two processes on localhost (4 CPU devices each) train exactly like one process with 8, and stop
together, at the same step, when one of them gets SIGTERM or Ctrl-C."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

import train_utils

# Runs train.py's main in a subprocess on the in-memory dataset (rows split by process).
WORKER = """
import functools, sys
sys.path[:0] = [{root!r}, {tests!r}]
import jax
jax.config.update("jax_num_cpu_devices", {devices})
from absl import app
sys.argv = ["train.py"] + {args!r}  # config overrides are read from sys.argv when train.py is imported
import train, train_utils
app.run(functools.partial(train.main, data=train_utils.TinyData()))
"""

OVERRIDES = {
    "dataset": "in_memory", "model.embed_dim": 8, "model.depths": "(1,)", "model.patch_size": 4,
    "model.focal_levels": 1, "model.dtype": "float32", "image_size": 8, "batch_size": 16,
    "eval_batch_size": 16, "total_steps": 3, "warmup_epochs": 0.5, "log_every_steps": 1,
    "eval_every_steps": 0, "checkpoint_every_steps": 100, "fsdp_min_size": 16, "mesh.data": 2, "mesh.fsdp": 4,
}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(workdir, devices, extra=(), env=None, **overrides):
  args = [f"--config={os.path.join(train_utils.ROOT, 'configs', 'default.py')}", f"--workdir={workdir}"]
  args += [f"--config.{k}={v}" for k, v in {**OVERRIDES, **overrides}.items()] + list(extra)
  code = WORKER.format(root=train_utils.ROOT, tests=os.path.dirname(__file__), devices=devices, args=args)
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
  env.pop("XLA_FLAGS", None)
  return subprocess.Popen([sys.executable, "-c", code], env=env, cwd=train_utils.ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _train_losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  train = {r["step"]: r["loss"] for r in records if r["split"] == "train"}
  evals = [r for r in records if r["split"] == "eval"]
  return [train[s] for s in sorted(train)], evals[-1]


def _pair(workdir, env=None, **overrides):
  port = _free_port()
  return [_launch(workdir, 4, [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
                  env, **overrides) for i in range(2)]


def _outputs(procs, timeout=420):
  outputs = []
  for p in procs:
    try:
      out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    outputs.append(out)
  return outputs


def test_two_processes_match_one(tmp_path):
  multi = str(tmp_path / "multi")
  procs = _pair(multi) + [_launch(str(tmp_path / "single"), 8)]
  outputs = _outputs(procs)
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-4000:]
  assert "Process 1/2, 4 local / 8 global devices" in outputs[1]
  multi_losses, multi_eval = _train_losses(multi)
  single_losses, single_eval = _train_losses(str(tmp_path / "single"))
  assert len(multi_losses) == 3
  np.testing.assert_allclose(multi_losses, single_losses, rtol=1e-5)
  np.testing.assert_allclose(multi_eval["loss"], single_eval["loss"], rtol=1e-5)
  assert multi_eval["num_examples"] == single_eval["num_examples"] == train_utils.NUM_EVAL


def _signal_one_of_two(workdir, signum, env=None, **overrides):
  """Runs two processes, signals process 1 once its train step is compiled; returns the step both
  saved (checking both exit 75 and that this step is the only checkpoint)."""
  procs = _pair(workdir, env, **overrides)
  head = []
  for line in procs[1].stdout:
    head.append(line)
    if "Compiled the train step" in line:
      break
  procs[1].send_signal(signum)
  outputs = _outputs(procs)
  outputs[1] = "".join(head) + outputs[1]
  saved = []
  for p, out in zip(procs, outputs):
    assert p.returncode == 75, out[-4000:]  # preempted: a distinct exit status on both processes
    saved += [int(s) for s in re.findall(r"saved step (\d+) to", out)]
  assert len(saved) == 2 and saved[0] == saved[1], outputs[0][-3000:]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == [str(saved[0])]
  return saved[0]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_one_signalled_process_stops_both_at_the_same_step(tmp_path, signum):
  # Logging and checkpoint intervals far beyond where the run is stopped: the processes must agree
  # on a step without the log-step all-gather (JAX's preemption service does it).
  total = 100_000
  step = _signal_one_of_two(str(tmp_path / "multi"), signum, total_steps=total, log_every_steps=total,
                            checkpoint_every_steps=total)
  assert 0 < step < total


def test_without_the_preemption_service_both_stop_at_a_log_step(tmp_path):
  # The service switched off: Python handles SIGTERM and the processes agree at log steps.
  total = 100_000
  step = _signal_one_of_two(str(tmp_path / "multi"), signal.SIGTERM, {"JAX_ENABLE_PREEMPTION_SERVICE": "false"},
                            total_steps=total, log_every_steps=7, checkpoint_every_steps=total)
  assert 0 < step < total and step % 7 == 0
