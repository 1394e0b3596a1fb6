"""Two processes on localhost (4 CPU devices each) train exactly like one process with 8."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np

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


def _launch(workdir, devices, extra=()):
  args = [f"--config={os.path.join(train_utils.ROOT, 'configs', 'default.py')}", f"--workdir={workdir}"]
  args += [f"--config.{k}={v}" for k, v in OVERRIDES.items()] + list(extra)
  code = WORKER.format(root=train_utils.ROOT, tests=os.path.dirname(__file__), devices=devices, args=args)
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("XLA_FLAGS", None)
  return subprocess.Popen([sys.executable, "-c", code], env=env, cwd=train_utils.ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _train_losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  train = {r["step"]: r["loss"] for r in records if r["split"] == "train"}
  evals = [r for r in records if r["split"] == "eval"]
  return [train[s] for s in sorted(train)], evals[-1]


def test_two_processes_match_one(tmp_path):
  port = _free_port()
  multi = str(tmp_path / "multi")
  procs = [
      _launch(multi, 4, [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"])
      for i in range(2)
  ]
  procs.append(_launch(str(tmp_path / "single"), 8))
  outputs = []
  for p in procs:
    try:
      out, _ = p.communicate(timeout=420)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    outputs.append(out)
    assert p.returncode == 0, out[-4000:]
  assert "Process 1/2, 4 local / 8 global devices" in outputs[1]
  multi_losses, multi_eval = _train_losses(multi)
  single_losses, single_eval = _train_losses(str(tmp_path / "single"))
  assert len(multi_losses) == 3
  np.testing.assert_allclose(multi_losses, single_losses, rtol=1e-5)
  np.testing.assert_allclose(multi_eval["loss"], single_eval["loss"], rtol=1e-5)
  assert multi_eval["num_examples"] == single_eval["num_examples"] == train_utils.NUM_EVAL
