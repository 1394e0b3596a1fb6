"""What a user sees of a run: console lines, TensorBoard events and a JSON-lines file.

Metrics travel as (sum, count) pairs so averages stay exact under padding and across hosts
(`average` divides them on the host). Only process 0 writes; TensorBoard events are written
with tensorboardX, which needs no TensorFlow.
"""
from __future__ import annotations

import json
import logging as std_logging
import os
import time
from typing import Any, Mapping

import numpy as np
from absl import logging

from focalnet_jax.progress import format_duration


METRICS_FILE = "metrics.jsonl"  # one JSON record per log or eval step; `read_metrics` reads it back


class _QuietLibraries(std_logging.Filter):
  """Drops orbax's INFO chatter (several lines per save) so a run's own lines stand out."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno > std_logging.INFO or "orbax" not in record.pathname


def quiet_library_logs() -> None:
  """Installs the filter on absl's handler (call once, from an entry point's main, before
  TensorFlow is imported), and hides the C++ INFO lines TensorFlow logs once it runs, unless
  TF_CPP_MIN_LOG_LEVEL is set (the lines it prints on import are `data.tf_import`'s to drop)."""
  logging.get_absl_handler().addFilter(_QuietLibraries())
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")


def average(sums: Mapping[str, Any]) -> dict[str, float]:
  """{'loss': (sum, count), 'lr': value, ...} -> {'loss': sum / count, 'lr': value}."""
  out = {}
  for key, value in sums.items():
    if isinstance(value, (tuple, list)):
      total, count = value
      out[key] = float(total) / max(float(count), 1e-12)
    else:
      out[key] = float(np.asarray(value))
  return out


class Writer:
  """Writes scalars to TensorBoard (`workdir/tb`) and `workdir/metrics.jsonl`; no-op off process 0."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self._tb = None
    self._jsonl = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, METRICS_FILE), "a")
      try:
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(os.path.join(workdir, "tb"))
      except ImportError:  # TensorBoard is optional; the JSONL file has everything.
        logging.warning("tensorboardX is not installed; writing metrics.jsonl only.")

  def write(self, step: int, scalars: Mapping[str, float], prefix: str) -> None:
    """Records `scalars` at `step` under `prefix` ('train' or 'eval')."""
    if not self.enabled:
      return
    record = {"step": int(step), "split": prefix, "time": time.time(), **{k: float(v) for k, v in scalars.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for key, value in scalars.items():
        self._tb.add_scalar(f"{prefix}/{key}", float(value), int(step))
      self._tb.flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def console_line(
    step: int, total_steps: int, steps_per_epoch: int, scalars: Mapping[str, float], img_per_s: float, eta_s: float
) -> str:
  """`step 100/1000 epoch 1.25 | loss 2.3456 lr 1.0e-03 | 850 img/s | ETA 3m05s`."""
  epoch = step / max(steps_per_epoch, 1)
  parts = [f"step {step}/{total_steps} epoch {epoch:.2f}"]
  parts.append(" ".join(f"{k} {v:.4g}" if k != "lr" else f"lr {v:.2e}" for k, v in scalars.items()))
  parts.append(f"{img_per_s:.0f} img/s")
  parts.append(f"ETA {format_duration(eta_s)}")
  return " | ".join(parts)


def read_metrics(path: str | os.PathLike[str]) -> dict[str, list[dict[str, float]]]:
  """A workdir or its metrics.jsonl -> {'train': [...], 'eval': [...]}, each sorted by step.

  The LAST record per (split, step) wins: a resumed run re-logs the steps after its last
  checkpoint, and those later values are the ones the finished run stands on. A cut last
  line (a run killed mid-write) is skipped; a record without 'step' or 'split' is an error.
  Either list can be empty (no log step yet); a missing file is FileNotFoundError.
  """
  path = os.fspath(path)
  if not path.endswith(".jsonl"):  # a workdir
    path = os.path.join(path, METRICS_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"No metrics file at {path!r}. train.py writes <workdir>/{METRICS_FILE} (one JSON record per "
        "log and eval step); pass the --workdir of a training run.")
  latest: dict[tuple[str, int], dict[str, float]] = {}
  with open(path) as f:
    for n, line in enumerate(f, 1):
      line = line.strip()
      if not line:
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError:  # the last line of a run killed mid-write
        continue
      if "step" not in record or "split" not in record:
        raise ValueError(f"{path}:{n}: record without 'step'/'split': {line[:120]}")
      latest[(record["split"], int(record["step"]))] = record
  runs: dict[str, list[dict[str, float]]] = {"train": [], "eval": []}
  for (split, _), record in sorted(latest.items(), key=lambda kv: kv[0][1]):
    runs.setdefault(split, []).append(record)
  return runs
