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
