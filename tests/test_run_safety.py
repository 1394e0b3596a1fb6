"""One run per workdir, and a workdir's run resumed only under its own config: the lock (held,
stale, on another host), config changes refused or accepted on resume with the config history
kept, Ctrl-C handled like SIGTERM, and a failed asynchronous save stopping the run at once."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

import train_utils
import focalnet_jax
from focalnet_jax import checkpoint
from focalnet_jax import train as trainer
from focalnet_jax.train import loop
from focalnet_jax.train import workdir as workdir_lib

pytestmark = pytest.mark.usefixtures("compilation_cache")


def train(config, workdir, **hooks):
  return trainer.train_and_evaluate(config, str(workdir), data=train_utils.TinyData(**hooks))


def _write_lock(workdir, **holder) -> str:
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, workdir_lib.LOCK)
  with open(path, "w") as f:
    json.dump({"host": socket.gethostname(), "started": "2026-01-01 00:00:00", "command": "train.py", **holder}, f)
  return path


def _dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def test_a_lock_left_by_an_earlier_start_of_a_requeued_slurm_job_is_taken_over(tmp_path, monkeypatch, caplog):
  # Killed (SIGKILL after KillWait) on node-17 before it released the lock; requeued here.
  path = _write_lock(str(tmp_path / "run"), host="node-17", pid=4242, slurm_job="42", slurm_restart=0)
  monkeypatch.setenv("SLURM_JOB_ID", "42")
  monkeypatch.setenv("SLURM_RESTART_COUNT", "0")  # the same start (or another job): another host's lock stands
  with pytest.raises(RuntimeError, match="locked by a training run on another host"):
    workdir_lib.acquire(str(tmp_path / "run"))
  monkeypatch.setenv("SLURM_JOB_ID", "43")
  monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
  with pytest.raises(RuntimeError, match="locked by a training run on another host"):
    workdir_lib.acquire(str(tmp_path / "run"))
  monkeypatch.setenv("SLURM_JOB_ID", "42")
  with caplog.at_level("WARNING"):
    assert workdir_lib.acquire(str(tmp_path / "run")) == path
  assert "Taking over the lock of a run that is no longer running (pid 4242 on host 'node-17'" in caplog.text
  held = json.load(open(path))
  assert held["pid"] == os.getpid() and held["slurm_job"] == "42" and held["slurm_restart"] == 1
  workdir_lib.release(path)


def test_a_second_run_on_a_workdir_in_use_is_refused_and_eval_still_reads_it(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # a relative folder: path is stored absolute (the data is injected here)
  config = train_utils.tiny_config(total_steps=2, checkpoint_every_steps=1, dataset="folder:images")
  workdir = str(tmp_path / "run")
  with loop.open_run(config, workdir, train_utils.TinyData()) as (run, start, rng):
    run.train(start, rng)
    lock = json.load(open(os.path.join(workdir, "run.lock")))
    assert lock["pid"] == os.getpid() and lock["host"] == socket.gethostname() and lock["started"]
    with pytest.raises(RuntimeError, match=rf"Workdir {workdir} is in use by another training run \(pid "
                                           rf"{os.getpid()} on host .*Wait for it to finish or stop it, or pass "
                                           r"another --workdir.*eval.py, which needs no lock"):
      train(config, workdir)
    assert focalnet_jax.from_pretrained(workdir).info.step == 2  # evaluating while it trains takes no lock
  assert not os.path.exists(os.path.join(workdir, "run.lock"))  # released on exit
  saved = json.loads(open(os.path.join(workdir, "config.json")).read())
  assert saved["total_steps"] == 2 and saved["dataset"] == f"folder:{tmp_path}/images"
  assert checkpoint.read_meta(os.path.join(workdir, "checkpoints"))["config"]["dataset"] == f"folder:{tmp_path}/images"


def test_a_stale_lock_is_taken_over_and_one_from_another_host_says_how_to_clear_it(tmp_path, caplog):
  # A crashed holder on this host (its pid gone), or a pid reused by another process: taken over.
  for name, holder in (("dead", {"pid": _dead_pid()}), ("reused", {"pid": os.getppid(), "pid_start": "1"})):
    path = _write_lock(str(tmp_path / name), **holder)
    with caplog.at_level("WARNING"):
      assert workdir_lib.acquire(str(tmp_path / name)) == path
    assert "Taking over the lock of a run that is no longer running" in caplog.text
    assert json.load(open(path))["pid"] == os.getpid()
    workdir_lib.release(path)
    assert not os.path.exists(path)
  # A live holder on this host.
  _write_lock(str(tmp_path / "live"), pid=os.getppid(), pid_start=workdir_lib._start_time(os.getppid()))
  with pytest.raises(RuntimeError, match=rf"in use by another training run \(pid {os.getppid()}"):
    workdir_lib.acquire(str(tmp_path / "live"))
  # Another host: nothing here can tell whether it still runs.
  path = _write_lock(str(tmp_path / "far"), host="node-17", pid=4242)
  with pytest.raises(RuntimeError, match=rf"locked by a training run on another host \(pid 4242 on host 'node-17'.*"
                                         rf"If it is not \(it crashed or its machine is gone\), delete {path} and rerun"):
    workdir_lib.acquire(str(tmp_path / "far"))
  assert json.load(open(path))["host"] == "node-17"  # left alone


def test_resuming_with_another_config_is_refused_harmless_changes_are_not_and_history_is_kept(tmp_path):
  workdir = tmp_path / "run"
  config = train_utils.tiny_config(total_steps=2, checkpoint_every_steps=1)
  train(config, workdir)
  saved = open(workdir / "config.json").read()
  for changes, expected in (
      ({"batch_size": 8, "base_lr": 1e-3}, ["batch_size: 16 -> 8", "base_lr: 0.0005 -> 0.001"]),
      ({"total_steps": 5}, ["total_steps: 2 -> 5"]),
      ({"model.embed_dim": 16, "seed": 3}, ["model.embed_dim: 8 -> 16", "seed: 0 -> 3"]),
  ):
    other = train_utils.tiny_config(**{"total_steps": 2, "checkpoint_every_steps": 1, **changes})
    with pytest.raises(ValueError, match=r"holds a run at step 2 whose checkpoint was written with another config") as e:
      train(other, workdir)
    for line in expected:
      assert line in [ln.strip() for ln in str(e.value).splitlines()], str(e.value)
    assert "pass another --workdir" in str(e.value) and "--config.allow_config_change=True" in str(e.value)
    assert open(workdir / "config.json").read() == saved  # the original config is kept
  # Logging, checkpoint and eval settings may change.
  harmless = train_utils.tiny_config(total_steps=2, checkpoint_every_steps=7, log_every_steps=3, keep_checkpoints=5,
                                     eval_every_steps=1, eval_batch_size=8, async_checkpoints=False)
  assert train(harmless, workdir)["step"] == 2
  # A deliberate change continues the run, and every start's config stays in the history.
  longer = train_utils.tiny_config(total_steps=3, checkpoint_every_steps=1, allow_config_change=True)
  assert train(longer, workdir)["step"] == 3
  history = [json.loads(line) for line in open(workdir / "config_history.jsonl")]
  assert [(h["start_step"], h["config"]["total_steps"]) for h in history] == [(0, 2), (2, 2), (2, 3)]
  assert json.load(open(workdir / "config.json"))["total_steps"] == 3


def test_ctrl_c_saves_and_stops_like_sigterm(tmp_path, ctrl_c):
  config = train_utils.tiny_config(total_steps=6, checkpoint_every_steps=100)

  def ctrl_c_at_3(step):
    if step == 2:  # the 3rd batch is being read: stop after that step
      os.kill(os.getpid(), signal.SIGINT)

  first = train(config, tmp_path / "run", on_step=ctrl_c_at_3)
  assert first["preempted"] == 1.0 and first["step"] == 3
  with checkpoint.manager(tmp_path / "run" / "checkpoints") as mngr:
    assert mngr.latest_step() == 3
  assert train(config, tmp_path / "run")["step"] == 6
  assert signal.getsignal(signal.SIGINT) is ctrl_c  # restored


def test_a_failed_async_save_stops_at_once_naming_step_directory_cause_and_intact_step(tmp_path, monkeypatch):
  from orbax.checkpoint._src.path import atomicity

  finalize = atomicity.AtomicRenameTemporaryPath.finalize

  async def disk_full_at_4(self, *args, **kwargs):
    if self.get_final().name == "4":
      raise OSError(28, "No space left on device")
    return await finalize(self, *args, **kwargs)

  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", disk_full_at_4)
  config = train_utils.tiny_config(total_steps=8, checkpoint_every_steps=2, keep_checkpoints=10)
  ckpts = str(tmp_path / "run" / "checkpoints")
  with pytest.raises(OSError, match=rf"^Saving checkpoint step 4 to {ckpts} failed \(OSError: \[Errno 28\] No space "
                                    r"left on device\)\. The last intact checkpoint is step 2\. Fix the cause"):
    train(config, tmp_path / "run")
  monkeypatch.undo()
  with checkpoint.manager(ckpts) as mngr:
    assert list(mngr.all_steps()) == [2]  # no save after the failed one


def test_reading_a_checkpoint_never_creates_a_directory(tmp_path):
  missing = tmp_path / "typo" / "checkpoints"
  for read in (checkpoint.load_params, checkpoint.read_meta):
    with pytest.raises(FileNotFoundError, match=rf"No checkpoint directory '{missing}'.*Check the path"):
      read(str(missing))
  with pytest.raises(FileNotFoundError, match=rf"No checkpoint, weight file or hub id at '{missing}'"):
    focalnet_jax.from_pretrained(str(missing))
  config = train_utils.tiny_config(init_from=str(missing))
  with pytest.raises(FileNotFoundError, match="No checkpoint directory"):
    train(config, tmp_path / "run")
  assert not (tmp_path / "typo").exists()


def test_empty_dirs_missing_steps_and_unreadable_metadata_are_named(tmp_path):
  import numpy as np

  empty = tmp_path / "empty"
  empty.mkdir()
  for read in (checkpoint.load_params, checkpoint.read_meta, focalnet_jax.from_pretrained):
    with pytest.raises(FileNotFoundError, match=r"No checkpoint found in .*empty.*Check the path"):
      read(str(empty))
  ckpts = tmp_path / "ckpts"
  for step in (2, 4):
    checkpoint.save(ckpts, {"params": {"w": np.full(2, step, np.float32)}}, {"model": "m"}, step=step)
  with pytest.raises(FileNotFoundError, match=r"has no step 7; it has steps \[2, 4\]"):
    checkpoint.read_meta(ckpts, step=7)
  with pytest.raises(FileNotFoundError, match=r"has no step 7; it has steps \[2, 4\]"):
    checkpoint.load_params(str(ckpts), step=7)
  (ckpts / "4" / "meta" / "metadata").write_text('{"model": ')  # an interrupted copy of the JSON
  with pytest.raises(ValueError, match=r"step 4 has no readable metadata \(.*\)\. It may be truncated"):
    checkpoint.read_meta(ckpts)
  assert checkpoint.read_meta(ckpts, step=2) == {"model": "m"}  # the other step is untouched and readable


def test_a_latest_step_rotated_away_while_it_is_read_is_retried_on_the_new_latest(tmp_path, monkeypatch):
  import shutil

  import numpy as np
  import orbax.checkpoint as ocp

  ckpts = str(tmp_path / "ckpts")
  for step in (1, 2):
    checkpoint.save(ckpts, {"params": {"w": np.full(2, step, np.float32)}}, {"model": "m"}, step=step)
  restore = ocp.CheckpointManager.restore
  rotated = []

  def rotate_first(self, step, *args, **kwargs):  # a trainer saves step 3 and deletes step 2 meanwhile
    if not rotated:
      rotated.append(step)
      checkpoint.save(ckpts, {"params": {"w": np.full(2, 3, np.float32)}}, {"model": "m"}, step=3)
      shutil.rmtree(os.path.join(ckpts, "2"))
    return restore(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "restore", rotate_first)
  params, _ = checkpoint.load_params(ckpts)
  assert rotated == [2] and params["w"].tolist() == [3.0, 3.0]

  # Caught in the middle of the deletion: step 3's directory is still there, its data gone.
  def half_deleted_first(self, step, *args, **kwargs):
    if len(rotated) == 1:
      rotated.append(step)
      checkpoint.save(ckpts, {"params": {"w": np.full(2, 4, np.float32)}}, {"model": "m"}, step=4)
      shutil.rmtree(os.path.join(ckpts, "3", "state"))
    return restore(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "restore", half_deleted_first)
  params, _ = checkpoint.load_params(ckpts)
  assert rotated == [2, 3] and params["w"].tolist() == [4.0, 4.0]


def test_top5_with_fewer_classes_is_labelled_by_its_k():
  from focalnet_jax.train import eval_step

  assert [eval_step.top_k_of(n) for n in (2, 5, 10, 1000)] == [2, 5, 5, 5]


def test_visualize_output_directory_gets_the_default_name(tmp_path):
  import visualize

  assert visualize.output_path(str(tmp_path), "modulation_cat.png") == str(tmp_path / "modulation_cat.png")
  assert visualize.output_path("new_dir/", "x/curves.png") == os.path.join("new_dir/", "curves.png")
  assert visualize.output_path("pic.png", "modulation_cat.png") == "pic.png"
  assert visualize.output_path(None, "modulation_cat.png") == "modulation_cat.png"


def test_an_empty_or_garbled_lock_is_stale_and_a_lock_that_cannot_be_written_leaves_nothing(tmp_path, caplog,
                                                                                           monkeypatch):
  for name, content in (("empty", ""), ("garbled", '{"host": '), ("no_pid", json.dumps({"host": socket.gethostname()}))):
    os.makedirs(tmp_path / name)
    path = tmp_path / name / workdir_lib.LOCK
    path.write_text(content)
    with caplog.at_level("WARNING"):
      assert workdir_lib.acquire(str(tmp_path / name)) == str(path)
    assert f"Taking over {path}: it is empty, unreadable or names no process" in caplog.text
    assert json.load(open(path))["pid"] == os.getpid()
    workdir_lib.release(str(path))
  # The disk fills up between creating the lock and writing it: no empty lock is left behind.
  def full(holder, f):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(workdir_lib.json, "dump", full)
  with pytest.raises(OSError, match=rf"Could not write the workdir lock {tmp_path}/full/run.lock .*No space left.*"
                                    r"nothing was left behind"):
    workdir_lib.acquire(str(tmp_path / "full"))
  assert os.listdir(tmp_path / "full") == []


def test_a_failed_deletion_of_an_old_step_is_not_a_failed_save_and_the_run_finishes(tmp_path, monkeypatch, caplog):
  from orbax.checkpoint._src.path import deleter

  def refuse(self, steps):
    if steps:
      raise PermissionError(13, "Permission denied", str(steps))

  monkeypatch.setattr(deleter.StandardCheckpointDeleter, "delete_steps", refuse)
  config = train_utils.tiny_config(total_steps=6, checkpoint_every_steps=2, keep_checkpoints=1)
  with caplog.at_level("WARNING"):
    result = train(config, tmp_path / "run")
  assert result["step"] == 6 and not result["preempted"]
  assert "Removing old checkpoint" in caplog.text and "Permission denied" in caplog.text
  monkeypatch.undo()
  assert checkpoint.read_meta(str(tmp_path / "run" / "checkpoints"))["config"]["total_steps"] == 6  # final save made
