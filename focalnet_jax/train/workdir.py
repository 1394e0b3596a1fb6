"""A training workdir owned by one run at a time, and the history of its configs.

`lock(workdir)` creates `<workdir>/run.lock` exclusively (O_EXCL), holding the holder's host,
pid, process start time and command. A second run on the same workdir is refused, naming the
holder. A lock left by a crashed run is recognised: on the same host, a holder whose pid no
longer runs (or runs another process, compared by start time) is taken over with a warning;
a lock from another host cannot be checked from here, so the error says how to clear it, unless it
was left by an earlier start of this same SLURM job (requeued: same SLURM_JOB_ID, a lower
SLURM_RESTART_COUNT), which is taken over too.
Only training takes the lock: evaluating a workdir while it trains reads committed steps and
never needs it. In multi-process runs only process 0 takes it.

`write_config` writes `config.json` (atomically) and appends to `config_history.jsonl`, so the
config of every start of the run is kept.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from typing import Iterator

from absl import logging

from focalnet_jax import atomic
from focalnet_jax.train.config_check import is_int

LOCK = "run.lock"
HISTORY = "config_history.jsonl"


def _start_time(pid: int) -> str | None:
  """The kernel's start time of `pid` (Linux), which tells a reused pid from the holder."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _alive(pid: int, start: str | None) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's live process
    return True
  now = _start_time(pid)
  return start is None or now is None or now == start


def _holder() -> dict:
  holder = {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": _start_time(os.getpid()),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "command": " ".join(sys.argv)}
  if "SLURM_JOB_ID" in os.environ:  # a requeued job is the same job started again, maybe on another host
    holder.update(slurm_job=os.environ["SLURM_JOB_ID"], slurm_restart=int(os.environ.get("SLURM_RESTART_COUNT", 0)))
  return holder


def _earlier_start_of_this_job(held: dict, me: dict) -> bool:
  """Whether `held` is a lock left by an earlier start of this SLURM job (killed before it released
  it, e.g. after KillWait): its job id is ours and its start count lower."""
  return ("slurm_job" in me and held.get("slurm_job") == me["slurm_job"]
          and is_int(held.get("slurm_restart")) and held["slurm_restart"] < me["slurm_restart"])


def _describe(h: dict) -> str:
  return f"pid {h.get('pid')} on host {h.get('host')!r}, started {h.get('started')} ({h.get('command', '?')!r})"


def _try_create(path: str, holder: dict) -> bool:
  try:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
  except FileExistsError:
    return False
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(holder, f)
  except BaseException as e:  # a full disk: no empty lock may be left to refuse every later run
    with contextlib.suppress(OSError):
      os.remove(path)
    if isinstance(e, OSError):
      raise OSError(e.errno, f"Could not write the workdir lock {path} ({e}); nothing was left behind. Free disk "
                             "space (or fix the directory's permissions) and rerun.") from e
    raise
  return True


def _read(path: str) -> dict | None:
  """The holder; None if there is no lock; {} if it is empty or garbled after a second look (a lock
  is written a microsecond after it is created, so a run that failed in between left it)."""
  for attempt in range(2):
    try:
      with open(path) as f:
        held = json.load(f)
      if isinstance(held, dict):
        return held
    except FileNotFoundError:
      return None
    except (OSError, ValueError):
      pass
    if attempt == 0:
      time.sleep(0.5)
  return {}


def acquire(workdir: str) -> str:
  """Takes `<workdir>/run.lock` for this process (see the module doc); returns its path."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK)
  me = _holder()
  for _ in range(3):  # a stale lock removed by us (or by a racing run) is retried
    if _try_create(path, me):
      return path
    held = _read(path)
    if held is None:
      continue
    if not held or held.get("host") == me["host"] and not is_int(held.get("pid")):
      logging.warning("Taking over %s: it is empty, unreadable or names no process, so it names no run (one that failed while "
                      "taking it, e.g. on a full disk, left it).", path)
      with contextlib.suppress(FileNotFoundError):
        os.remove(path)
      continue
    if _earlier_start_of_this_job(held, me) or (
        held.get("host") == me["host"] and is_int(held.get("pid")) and not _alive(held["pid"], held.get("pid_start"))):
      logging.warning("Taking over the lock of a run that is no longer running (%s).", _describe(held))
      with contextlib.suppress(FileNotFoundError):
        os.remove(path)
      continue
    if held.get("host") == me["host"]:
      raise RuntimeError(
          f"Workdir {workdir} is in use by another training run ({_describe(held)}); two runs would "
          "overwrite each other's checkpoints and logs. Wait for it to finish or stop it, or pass another "
          "--workdir. (To evaluate it while it trains, use eval.py, which needs no lock.)")
    raise RuntimeError(
        f"Workdir {workdir} is locked by a training run on another host ({_describe(held)}); two runs "
        "would overwrite each other's checkpoints and logs. If that run is still going, pass another "
        f"--workdir. If it is not (it crashed or its machine is gone), delete {path} and rerun.")
  raise RuntimeError(f"Could not take the lock {path}: other runs keep taking it. Pass another --workdir.")


def release(path: str) -> None:
  """Removes the lock if this process still holds it."""
  held = _read(path)
  if held and held.get("pid") == os.getpid() and held.get("host") == socket.gethostname():
    with contextlib.suppress(FileNotFoundError):
      os.remove(path)


@contextlib.contextmanager
def created_or_removed(workdir: str) -> Iterator[None]:
  """A workdir this run creates is removed again if the run fails while it is still empty (a
  missing dataset, a bad config): no empty directory is left behind to puzzle over."""
  existed = os.path.isdir(workdir)
  try:
    yield
  except BaseException:
    if not existed:
      with contextlib.suppress(OSError):
        os.rmdir(workdir)  # only if empty
    raise


@contextlib.contextmanager
def locked(workdir: str, enabled: bool = True) -> Iterator[None]:
  """The workdir held by this process for the block (a no-op unless `enabled`)."""
  path = acquire(workdir) if enabled else None
  try:
    yield
  finally:
    if path:
      release(path)


def write_config(workdir: str, config_json: str, start_step: int) -> None:
  """`config.json` replaced atomically, and this start appended to `config_history.jsonl`."""
  atomic.write_text(os.path.join(workdir, "config.json"), config_json)
  entry = {"time": time.strftime("%Y-%m-%d %H:%M:%S %z"), "start_step": start_step,
           "host": socket.gethostname(), "config": json.loads(config_json)}
  with open(os.path.join(workdir, HISTORY), "a") as f:
    f.write(json.dumps(entry) + "\n")
