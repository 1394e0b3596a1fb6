"""How a run is asked to stop early (SIGTERM, Ctrl-C) and how its processes agree on the step.

One process: the first SIGTERM or Ctrl-C sets a flag; the loop saves after the current step and
returns; a second signal exits at once (orbax commits each step atomically, so the last committed
step stays intact).

Several processes (`jax.distributed.initialize`): every process must save the same step, since a
checkpoint is written by all of them together. JAX's preemption service does that agreement: its
own SIGTERM handler (in C++) tells every process through the coordination service, which settles
on the step after the furthest one, and `reached_preemption_sync_point(step)` is True on every
process at that step. So SIGTERM is left to the service, and a first Ctrl-C is handed to it as a
SIGTERM to this process. The processes then stop at the next step, whatever the logging interval.
Without the service (`jax_enable_preemption_service=False`) they agree at log steps instead, with
one all-gather of the flags.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any, Iterator

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

# train.py's exit status for a run stopped by SIGTERM or Ctrl-C before its last step (EX_TEMPFAIL):
# schedulers can requeue it, and `train.py && eval.py` does not evaluate an unfinished model.
PREEMPTED_EXIT_CODE = 75

# Set by the first SIGTERM or Ctrl-C this process handles itself.
_STOP = threading.Event()


def preemption_service_running() -> bool:
  """True in a multi-process run whose JAX preemption service is up (it owns SIGTERM then)."""
  if jax.process_count() == 1:
    return False
  try:
    # 0 is where every loop's count starts (the service's own initial value), so probing with it
    # changes nothing.
    multihost_utils.reached_preemption_sync_point(0)
  except RuntimeError:  # the service is disabled
    return False
  return True


def request_stop(signum: int = signal.SIGTERM, *_: Any) -> None:
  """The handler of a first SIGTERM or Ctrl-C: save after this step, then stop. A second one
  exits at once."""
  if _STOP.is_set():
    logging.warning("Second %s: exiting now without saving; rerun the same command to resume from the last "
                    "committed checkpoint.", signal.Signals(signum).name)
    logging.flush()
    os._exit(128 + signum)
  logging.warning("%s: saving after this step, then stopping (press Ctrl-C again to exit at once).",
                  signal.Signals(signum).name)
  _STOP.set()


def _hand_to_service(signum: int, frame: Any) -> None:
  """Ctrl-C in a multi-process run: a SIGTERM to this process, which JAX's preemption service
  catches and announces to every process."""
  first = not _STOP.is_set()
  request_stop(signum, frame)
  if first:
    os.kill(os.getpid(), signal.SIGTERM)


class StopAgreement:
  """Whether the loop stops after `step`: the same answer on every process, at the same step.

  The service is given the number of steps this loop has taken, not the global step: every
  process starts counting from 0 (its state before the loop), so a notice that arrives while the
  run is still restoring or compiling settles on the first step instead of a step already past."""

  def __init__(self, start_step: int, service: bool) -> None:
    self.start_step, self.service, self.single = start_step, service, jax.process_count() == 1

  def __call__(self, step: int, log_every_steps: int) -> bool:
    if self.single:
      return _STOP.is_set()
    if self.service:  # a local check when nothing happened, no communication
      return multihost_utils.reached_preemption_sync_point(step - self.start_step)
    return step % log_every_steps == 0 and bool(
        np.any(multihost_utils.process_allgather(np.asarray(_STOP.is_set()))))


@contextlib.contextmanager
def stop_signals() -> Iterator[bool]:
  """SIGTERM and Ctrl-C ask the loop to save and stop while the block runs (in the main thread).
  Yields whether JAX's preemption service runs (then it owns SIGTERM; see `StopAgreement`)."""
  _STOP.clear()
  service = preemption_service_running()
  if threading.current_thread() is not threading.main_thread():
    yield service
    return
  handlers = {signal.SIGINT: request_stop, signal.SIGTERM: request_stop}
  if service:
    handlers = {signal.SIGINT: _hand_to_service}  # SIGTERM stays with JAX's preemption service
  old = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
  try:
    yield service
  finally:
    for sig, handler in old.items():
      signal.signal(sig, handler)
