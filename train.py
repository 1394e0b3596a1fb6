r"""Trains and evaluates a FocalNet: a thin entry point over `focalnet_jax.train.train_and_evaluate`.

  python train.py --config configs/quickstart.py --workdir runs/quickstart
  python train.py --config configs/focalnet_t.py --workdir runs/t --config.batch_size=512

Multi-host: run the same command on every host with
  --coordinator_address HOST:PORT --num_processes N --process_id I
or with --distributed on a cluster that JAX detects (SLURM, Cloud TPU, ...).

The first SIGTERM or Ctrl-C saves the current step and stops; a second one exits at once.
Exit status: 0 when the run finished, 75 (EX_TEMPFAIL) when it was stopped by SIGTERM or
Ctrl-C before its last step (rerun the same command to resume; a scheduler can requeue on 75,
and `train.py && eval.py` does not evaluate an unfinished model), 1 on an error.
"""
from __future__ import annotations

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from focalnet_jax.train import runlog

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and config.json go.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 (multi-host).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() with cluster auto-detection."
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str], data=None) -> None:
  """The command; `data` (a `focalnet_jax.data.Dataset`) replaces the dataset the config names."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  runlog.quiet_library_logs()
  from focalnet_jax.train import config_check

  config_check.check_sequence_flags(sys.argv)
  import jax  # after flag parsing, so --jax_* flags and env settings apply

  if _COORDINATOR.value or _DISTRIBUTED.value:
    jax.distributed.initialize(
        coordinator_address=_COORDINATOR.value,
        num_processes=_NUM_PROCESSES.value,
        process_id=_PROCESS_ID.value,
    )
  logging.info("Process %d/%d, %d local / %d global devices.", jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  from focalnet_jax.train import stopping, train_and_evaluate

  try:
    result = train_and_evaluate(_CONFIG.value, _WORKDIR.value, data=data)
  except (ValueError, FileNotFoundError) as e:  # bad input: its message says what to fix, a traceback hides it
    logging.debug("Traceback:", exc_info=True)
    raise SystemExit(f"train.py: error: {e}") from e
  if jax.process_index() == 0:
    print(json.dumps({"final": result}))
  if result.get("preempted"):
    sys.exit(stopping.PREEMPTED_EXIT_CODE)


def print_help() -> None:
  """--help: the usage, the flags and every --config.* field with its default (exit status 0)."""
  from configs import default

  print(__doc__ + "\nFlags:\n" + flags.FLAGS.main_module_help())
  print("\nConfig fields (defaults of configs/default.py; a config file overrides some), set with --config.FIELD=VALUE:")
  for key, value in sorted(_flat(default.get_config().to_dict()).items()):
    print(f"  --config.{key}={value!r}")


def _flat(tree: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in tree.items():
    out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
  return out


if __name__ == "__main__":
  if any(a in ("-h", "--help", "-help", "--helpshort") for a in sys.argv[1:]):
    print_help()
    sys.exit(0)
  app.run(main)
