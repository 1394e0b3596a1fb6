"""Faults never lose work or fail obscurely: SIGKILL (also mid-save) and resume, non-finite
losses (stop or skip), corrupt checkpoints, bad configs, determinism.

The table in docs/reliability.md lists every fault tried and the test showing it, here or in
the other test files. Run as a script, this file is the training process the kill tests kill.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("compilation_cache")
HERE = os.path.dirname(os.path.abspath(__file__))
CHILD_DEVICES = 2
TOTAL, EVERY = 8, 3  # the killed runs save at steps 3, 6 and 8


# --- the child: a tiny training run that can be told to hang where the parent kills it -------


def _child(workdir: str) -> None:
  """Trains the tiny model for TOTAL steps in `workdir` (resuming), writing result.json.

  HANG_AT_STEP=k: hang while reading the batch of step k+1 (after step k is done).
  HANG_IN_SAVE=k: hang in orbax's commit (the rename of the finished temporary directory)
  of step k, i.e. with the step's data written but not committed.
  Either way a `hung` file appears in `workdir` and the process waits to be killed.
  """
  import asyncio

  import jax
  from absl import logging

  logging.set_verbosity(logging.INFO)  # "Resumed from ..." shows where a rerun started
  jax.config.update("jax_num_cpu_devices", CHILD_DEVICES)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  import train_utils
  from focalnet_jax.train import train_and_evaluate
  from orbax.checkpoint._src.path import atomicity

  marker = os.path.join(workdir, "hung")

  def hang() -> None:
    open(marker, "w").close()
    while True:
      time.sleep(1)

  hang_at = int(os.environ.get("HANG_AT_STEP", -1))
  hang_in_save = os.environ.get("HANG_IN_SAVE")
  if hang_in_save:
    finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def slow_finalize(self):
      if self.get_final().name == hang_in_save:
        open(marker, "w").close()
        while True:
          await asyncio.sleep(1)
      return await finalize(self)

    atomicity.AtomicRenameTemporaryPath.finalize = slow_finalize

  data = train_utils.TinyData(on_step=lambda s: hang() if s == hang_at else None)
  config = train_utils.tiny_config(total_steps=TOTAL, checkpoint_every_steps=EVERY, log_every_steps=2,
                                   ema_decay=0.5)
  result = train_and_evaluate(config, workdir, data=data)
  with open(os.path.join(workdir, "result.json"), "w") as f:
    json.dump(result, f)


def _run(workdir: str, cache: str, hang: dict[str, int] | None = None, timeout: float = 120) -> str:
  """Runs the child; with `hang`, SIGKILLs it once it hangs (and the given step is committed)."""
  os.makedirs(workdir, exist_ok=True)
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", JAX_COMPILATION_CACHE_DIR=cache,
             **{k: str(v) for k, v in (hang or {}).items() if k != "wait_for_step"})
  log = os.path.join(workdir, f"log_{len(os.listdir(workdir))}.txt")
  with open(log, "w") as out:
    proc = subprocess.Popen([sys.executable, __file__, workdir], env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.time() + timeout
    try:
      if hang is None:
        rc = proc.wait(timeout=timeout)
        assert rc == 0, open(log).read()[-3000:]
        return log
      committed = os.path.join(workdir, "checkpoints", str(hang.get("wait_for_step", "")))
      while not (os.path.exists(os.path.join(workdir, "hung")) and os.path.isdir(committed)):
        assert proc.poll() is None, "exited before it could be killed:\n" + open(log).read()[-3000:]
        assert time.time() < deadline, "never reached the kill point:\n" + open(log).read()[-3000:]
        time.sleep(0.1)
      proc.send_signal(signal.SIGKILL)
      assert proc.wait(timeout=30) == -signal.SIGKILL
      os.remove(os.path.join(workdir, "hung"))
      return log
    finally:
      if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """An uninterrupted child run: (workdir, compilation cache dir) shared by the kill tests."""
  root = tmp_path_factory.mktemp("straight")
  cache = str(root / "jax_cache")
  _run(str(root / "run"), cache)
  return str(root / "run"), cache


def _steps(ckpts: str) -> list[int]:
  from focalnet_jax import checkpoint

  with checkpoint.manager(ckpts) as mngr:
    return list(mngr.all_steps())


def _state(workdir: str, step: int | None = None):
  from focalnet_jax import checkpoint

  state, _, step = checkpoint.restore_state(os.path.join(workdir, "checkpoints"), step=step)
  return state, step


def _assert_same_run(workdir: str, reference: str) -> None:
  """Bitwise-equal final train state (params, EMA, optimizer moments) and equal metrics."""
  import jax

  a, step_a = _state(workdir)
  b, step_b = _state(reference)
  assert step_a == step_b == TOTAL
  flat_a, flat_b = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
  assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
  for (path, x), (_, y) in zip(flat_a, flat_b):
    assert np.array_equal(np.asarray(x), np.asarray(y)), jax.tree_util.keystr(path)
  result = json.load(open(os.path.join(workdir, "result.json")))
  expected = json.load(open(os.path.join(reference, "result.json")))
  for key in ("loss", "top1", "top5", "ema_loss", "train_loss", "train_grad_norm", "step"):
    assert result[key] == expected[key], key


def test_sigkill_mid_run_then_rerun_ends_bitwise_like_an_uninterrupted_run(straight, tmp_path):
  reference, cache = straight
  workdir = str(tmp_path / "run")
  # SIGKILL while step 5 is under way, after step 3 was committed.
  _run(workdir, cache, {"HANG_AT_STEP": 4, "wait_for_step": 3})
  assert _steps(os.path.join(workdir, "checkpoints")) == [3]
  log = _run(workdir, cache)
  assert "Resumed from" in open(log).read() and "at step 3" in open(log).read()
  _assert_same_run(workdir, reference)


def test_sigkill_during_a_save_keeps_the_previous_checkpoint(straight, tmp_path):
  reference, cache = straight
  workdir = str(tmp_path / "run")
  # SIGKILL while orbax commits step 6: its data is written to a temporary directory.
  _run(workdir, cache, {"HANG_IN_SAVE": 6, "wait_for_step": 3})
  ckpts = os.path.join(workdir, "checkpoints")
  names = sorted(os.listdir(ckpts))
  assert "3" in names and "6" not in names
  assert any(n.startswith("6.orbax-checkpoint-tmp") for n in names), names
  assert _steps(ckpts) == [3]  # the half-written step is ignored
  assert _state(workdir)[1] == 3
  log = _run(workdir, cache)
  assert "at step 3" in open(log).read()
  _assert_same_run(workdir, reference)
  assert not any("tmp" in n for n in os.listdir(ckpts))  # the rerun's save of 6 replaced it


def test_a_second_ctrl_c_exits_at_once_keeping_the_committed_step(straight, tmp_path):
  _, cache = straight
  workdir = str(tmp_path / "run")
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", JAX_COMPILATION_CACHE_DIR=cache,
             HANG_AT_STEP="4")
  os.makedirs(workdir)
  log = os.path.join(workdir, "log.txt")
  with open(log, "w") as out:
    proc = subprocess.Popen([sys.executable, __file__, workdir], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
      deadline = time.time() + 120
      while not (os.path.exists(os.path.join(workdir, "hung")) and os.path.isdir(os.path.join(workdir, "checkpoints", "3"))):
        assert proc.poll() is None and time.time() < deadline, open(log).read()[-3000:]
        time.sleep(0.1)
      proc.send_signal(signal.SIGINT)  # first: asks to save and stop (the data read hangs, so it cannot yet)
      time.sleep(1.5)
      assert proc.poll() is None
      proc.send_signal(signal.SIGINT)  # second: exits at once
      assert proc.wait(timeout=30) == 128 + signal.SIGINT
    finally:
      if proc.poll() is None:
        proc.kill()
  text = open(log).read()
  assert "SIGINT: saving after this step, then stopping (press Ctrl-C again to exit at once)" in text
  assert "Second SIGINT: exiting now without saving; rerun the same command to resume" in text
  assert _steps(os.path.join(workdir, "checkpoints")) == [3]


# --- in-process runs (the module's compilation cache: the same tiny step compiles once) ---------


def _train(config, workdir: str, *, nan_at: int | None = None):
  """train_and_evaluate on the tiny in-memory dataset; `nan_at=k` puts a NaN into the batch of step k+1."""
  import train_utils
  from focalnet_jax.train import train_and_evaluate

  return train_and_evaluate(config, workdir, data=train_utils.TinyData(nan_at=nan_at))


def _all_finite(tree) -> bool:
  import jax

  return all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(tree))


def test_nan_stops_naming_step_metric_and_last_good_checkpoint_and_never_saves_it(tmp_path):
  import train_utils

  # nan_at=4: step 5 sees a NaN; saves are due at 2, 4, 6 and the loss is checked first
  config = train_utils.tiny_config(total_steps=8, checkpoint_every_steps=2, log_every_steps=100,
                                   keep_checkpoints=10)
  workdir = str(tmp_path / "run")
  with pytest.raises(FloatingPointError,
                     match=r"Non-finite (loss|grad_norm) \(nan\) at step 5\. Last good checkpoint: step 4 in "
                           + str(tmp_path / "run" / "checkpoints")):
    _train(config, workdir, nan_at=4)
  ckpts = os.path.join(workdir, "checkpoints")
  assert _steps(ckpts) == [2, 4]
  for step in (2, 4):
    state, _ = _state(workdir, step)
    assert _all_finite(state)


def test_params_that_overflow_with_a_finite_loss_are_never_saved(tmp_path):
  import jax
  import jax.numpy as jnp
  import train_utils
  from focalnet_jax.train import loop

  config = train_utils.tiny_config(total_steps=6, checkpoint_every_steps=2, log_every_steps=100,
                                   keep_checkpoints=10)
  with loop.open_run(config, str(tmp_path / "run"), train_utils.TinyData()) as (run, start, rng):
    step_fn = run.train_step

    def overflowing(state, batch, rng):  # step 4's update overflows; its loss was still finite
      state, metrics = step_fn(state, batch, rng)
      state["params"] = jax.tree.map(lambda p: jnp.where(state["step"] == 4, jnp.inf, p), state["params"])
      return state, metrics

    run.train_step = overflowing
    with pytest.raises(FloatingPointError, match=r"Non-finite params at step 4; not saved\. Last good checkpoint: "
                                                 r"step 2"):
      run.train(start, rng)
  assert _steps(str(tmp_path / "run" / "checkpoints")) == [2]


def test_nan_skip_keeps_the_state_and_counts_the_step(tmp_path):
  import jax
  import train_utils

  config = train_utils.tiny_config(total_steps=6, checkpoint_every_steps=1, log_every_steps=1,
                                   keep_checkpoints=10, nonfinite="skip", ema_decay=0.5)
  workdir = str(tmp_path / "run")
  result = _train(config, workdir, nan_at=4)
  assert result["step"] == 6 and result["skipped_steps"] == 1.0
  assert np.isfinite(result["loss"]) and np.isfinite(result["train_loss"])
  before, _ = _state(workdir, 4)
  skipped, _ = _state(workdir, 5)
  after, _ = _state(workdir, 6)
  assert int(skipped["step"]) == 5 and _all_finite(after)
  for key in ("params", "opt_state", "ema_params"):  # step 5 changed nothing but the counter
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)),
                 before[key], skipped[key])
  assert not np.array_equal(np.asarray(after["params"]["head"]["kernel"]),
                            np.asarray(skipped["params"]["head"]["kernel"]))
  logged = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  skips = {r["step"]: r["skipped_steps"] for r in logged if r["split"] == "train"}
  assert skips == {1: 0.0, 2: 0.0, 3: 0.0, 4: 0.0, 5: 1.0, 6: 0.0}


def test_same_seed_same_losses_other_seed_differs(tmp_path):
  import train_utils

  def losses(seed: int, name: str) -> list[float]:
    config = train_utils.tiny_config(total_steps=3, seed=seed)
    _train(config, str(tmp_path / name))
    return [r["loss"] for r in map(json.loads, open(tmp_path / name / "metrics.jsonl")) if r["split"] == "train"]

  first = losses(0, "a")
  assert len(first) == 3 and first == losses(0, "b")
  assert first != losses(1, "c")


def test_corrupt_checkpoint_is_named_with_a_way_out_and_left_alone(tmp_path):
  import train_utils
  import focalnet_jax
  from focalnet_jax import checkpoint

  config = train_utils.tiny_config(total_steps=4, checkpoint_every_steps=2)
  workdir = str(tmp_path / "run")
  _train(config, workdir)
  ckpts = os.path.join(workdir, "checkpoints")
  # A run with another model in the same workdir: refused by its config, and when the change is
  # allowed deliberately, named by the restore, not a raw restore error.
  bigger = train_utils.tiny_config(total_steps=6, checkpoint_every_steps=2, **{"model.embed_dim": 16})
  with pytest.raises(ValueError, match=r"(?s)model.embed_dim: 8 -> 16.*another --workdir"):
    _train(bigger, workdir)
  bigger.allow_config_change = True
  with pytest.raises(ValueError, match=r"(?s)Cannot resume from .*checkpoints/4 .*another model"):
    _train(bigger, workdir)

  # Truncate every data file of step 4 (as a full disk or an interrupted copy would).
  state_dir = os.path.join(ckpts, "4", "state")
  for root, _, files in os.walk(state_dir):
    if os.path.basename(root) == "d":
      for f in files:
        with open(os.path.join(root, f), "r+b") as fh:
          fh.truncate(os.path.getsize(os.path.join(root, f)) // 2)
  listing = sorted((r, f, os.path.getsize(os.path.join(r, f))) for r, _, fs in os.walk(ckpts) for f in fs)

  path = os.path.join(ckpts, "4")
  with pytest.raises(ValueError, match=rf"(?s)Could not restore checkpoint '{path}'.*truncated or corrupt"
                                       r".*step=2"):
    checkpoint.load_params(ckpts)
  with pytest.raises(ValueError, match=rf"(?s){path}.*step=2"):
    focalnet_jax.from_pretrained(workdir)
  assert np.isfinite(np.asarray(checkpoint.load_params(ckpts, step=2)[0]["head"]["kernel"])).all()
  with pytest.raises(ValueError, match=rf"(?s)Cannot resume from {path} .*truncated or corrupt.*resume from "
                                       rf"step 2 instead, move {path} out of the way"):
    _train(config, workdir)
  assert sorted((r, f, os.path.getsize(os.path.join(r, f))) for r, _, fs in os.walk(ckpts) for f in fs) == listing


@pytest.mark.parametrize("overrides,message", [
    ({"model.focal_windows": 0}, "positive odd int"),
    ({"model.focal_windows": 4}, "positive odd int"),
    ({"model.focal_levels": -1}, r"model.focal_levels=-1 must be an int >= 0"),
    ({"model.focal_levels": "abc"}, r"model.focal_levels='abc' must be an int >= 0, or one per stage .*"
                                    r"\(--config.model.focal_levels=...\)"),
    ({"min_lr": 1e-2}, r"min_lr=0.01 must be <= base_lr=0.0005 \(the rate would climb after warmup instead of "
                       r"decaying\) \(--config.min_lr=...\)"),
    ({"warmup_lr": 1e-2}, r"warmup_lr=0.01 must be <= base_lr=0.0005"),
    ({"aug.mean": (0.5, 0.5)}, r"aug.mean=\(0.5, 0.5\) must be three numbers, one per RGB channel"),
    ({"aug.std": (0.2, 0.0, 0.2)}, r"aug.std=\(0.2, 0.0, 0.2\) must be three numbers > 0, .*--config.aug.std="),
    ({"model.num_classes": 0}, r"model.num_classes=0 must be an int >= 1"),
    ({"model.dtype": "fp16"}, r"model.dtype='fp16' must be 'float32' or 'bfloat16' or 'float16'"),
    ({"model.focal_windows": (3, 4)}, r"model.focal_windows=\(3, 4\) must be a positive odd int"),
    ({"model.name": "focalnet_tiny_srff"}, "Did you mean focalnet_tiny_srf"),
    ({"image_size": 10}, r"multiples of 4.*Nearest valid sides: 8, 12"),
    ({"batch_size": 12}, r"batch_size=12 must be divisible by the 8 mesh devices x grad_accum_steps=1; nearest valid values: 8, 16"),
    ({"nonfinite": "ignore"}, "must be 'stop' or 'skip'"),
    ({"keep_checkpoints": 0}, r"keep_checkpoints=0 must be an int >= 1 \(0 would delete every checkpoint"),
    ({"base_lr": -1e-3}, r"base_lr=-0.001 must be a number > 0 \(a negative rate runs gradient ascent\)"),
    ({"batch_size": 0}, r"batch_size=0 must be an int >= 1 \(--config.batch_size=...\)"),
    ({"eval_batch_size": -8}, r"eval_batch_size=-8 must be an int >= 1"),
    ({"grad_accum_steps": 0}, r"grad_accum_steps=0 must be an int >= 1"),
    ({"log_every_steps": 0}, r"log_every_steps=0 must be an int >= 1"),
    ({"checkpoint_every_steps": -5}, r"checkpoint_every_steps=-5 must be an int >= 1"),
    ({"total_steps": -1, "num_epochs": 0}, r"num_epochs=0 trains nothing: set num_epochs > 0 or total_steps > 0"),
    ({"total_steps": 0}, r"total_steps=0 must be an int > 0, or -1"),
    ({"model.depths": (2, 0)}, r"model.depths=\(2, 0\) must be a non-empty sequence of positive ints"),
    ({"ema_decay": 1.5, "label_smoothing": -0.1}, r"ema_decay=1.5 must be a number in \[0, 1\).*label_smoothing=-0.1"),
])
def test_bad_config_values_fail_before_training_with_the_fix(tmp_path, overrides, message):
  import train_utils

  with pytest.raises(ValueError, match=message):
    _train(train_utils.tiny_config(**overrides), str(tmp_path))
  assert not os.path.exists(tmp_path / "checkpoints") and not os.path.exists(tmp_path / "config.json")


def test_a_sequence_flag_given_one_number_is_refused():
  from focalnet_jax.train import config_check

  # ml_collections reads --config.model.depths=3 as (3,): a one-stage network, silently.
  with pytest.raises(ValueError, match=r"--config.model.depths=3: model.depths takes one value per stage.*"
                                       r"'\(2,2,6,2\)' \(or '\(3,\)' if you meant one item\)"):
    config_check.check_sequence_flags(["train.py", "--config.model.depths=3"])
  with pytest.raises(ValueError, match=r"aug.rrc_scale takes"):
    config_check.check_sequence_flags(["--config.aug.rrc_scale=0.5"])
  config_check.check_sequence_flags(["--config.model.depths=(3,)", "--config.model.depths=2,2", "--config.batch_size=3"])


if __name__ == "__main__":
  _child(sys.argv[1])
