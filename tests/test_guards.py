"""Checks that guard a run's numbers: a check that cannot run refuses (resume with unreadable
metadata), every config field in its range before anything compiles, labels in range at every
data door, non-finite weights and logits never turned into a printed number."""
from __future__ import annotations

import os

import numpy as np
import pytest

import train_utils
from focalnet_jax import train as trainer

pytestmark = pytest.mark.usefixtures("compilation_cache")


def _train(config, workdir, data=None):
  return trainer.train_and_evaluate(config, str(workdir), data=data or train_utils.TinyData())


def test_a_resume_check_that_cannot_read_the_saved_config_refuses(tmp_path):
  workdir = tmp_path / "run"
  _train(train_utils.tiny_config(total_steps=2, checkpoint_every_steps=1), workdir)
  config_json = (workdir / "config.json").read_text()
  (workdir / "checkpoints" / "2" / "meta" / "metadata").write_text('{"model": ')  # damaged
  longer = train_utils.tiny_config(total_steps=4, checkpoint_every_steps=1, batch_size=8)
  with pytest.raises(ValueError, match=rf"Cannot check that {workdir} may be resumed under this config: the "
                                       rf"metadata of {workdir}/checkpoints/2 cannot be read .*move "
                                       rf"{workdir}/checkpoints/2 out of the way to resume from step 1.*"
                                       r"--config.allow_config_change=True. Nothing was written"):
    _train(longer, workdir)
  assert (workdir / "config.json").read_text() == config_json
  assert sorted(os.listdir(workdir / "checkpoints")) == ["1", "2"]


def test_every_shipped_config_passes_the_range_audit():
  import glob
  import importlib

  from focalnet_jax.train import config_check

  paths = [os.path.relpath(p, train_utils.ROOT) for pattern in ("configs/*.py", "configs/ablations/*.py")
           for p in sorted(glob.glob(os.path.join(train_utils.ROOT, pattern)))]
  names = [p[:-3].replace("/", ".") for p in paths if not p.endswith(("__init__.py", "common.py"))]
  assert "configs.finetune" in names and len(names) > 10
  for name in names:
    module = importlib.import_module(name)
    if hasattr(module, "get_config"):
      config_check.check_values(module.get_config())  # e.g. finetune's mesh.fsdp=-1 is a valid value
