"""One `Execution` value (focalnet_jax/model/execution.py): the config's `execution` section, the
benchmark's flags and the resume rules follow its fields; the former spellings (FocalNet kwargs
such as `depthwise_impl=`, `config.model.<switch>`, `--depthwise-impl`) keep working for one release
with a FutureWarning naming the new one; a checkpoint written before the change resumes and loads.

Each switch's values and gradients are tested where the switch lives (test_focal_context.py,
test_fast_paths.py, test_aligned_projection.py, test_network.py's remat tests).
"""
from __future__ import annotations

import glob
import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

import train_utils
from configs import default
from focalnet_jax import evaluation
from focalnet_jax import train as trainer
from focalnet_jax.model import Execution, create_model
from focalnet_jax.model import execution as execution_lib
from focalnet_jax.model.backbone import create_backbone
from focalnet_jax.train import config_check
from focalnet_jax.train.state import build_model
from test_configs import load

CONFIG = os.path.join(train_utils.ROOT, "configs", "focalnet_t.py")
TINY = dict(embed_dim=8, depths=(1, 1), num_classes=3)
# A valid value other than the default for every switch (a new switch must add one here).
OTHER = dict(depthwise="xla", focal_context="fused", remat="dots", f_align=8, chunk_elements=0)


def test_every_switch_has_its_default_in_the_config_and_is_harmless_on_resume():
  assert set(OTHER) == set(execution_lib.field_names())
  config = default.get_config()
  assert Execution(**config.execution.to_dict()) == Execution()  # configs/default.py holds the same defaults
  saved = json.loads(config.to_json_best_effort())
  for name, value in OTHER.items():
    changed = default.get_config()
    changed.execution[name] = value
    config_check.check_values(changed)
    # A run may resume under another switch: the states it goes through are the same.
    assert config_check.config_changes(saved, changed) == [], name


@pytest.mark.parametrize("name,value,message", [
    ("depthwise", "fft", r"execution.depthwise='fft' must be one of \('auto', 'xla', 'shift', 'native'\)"),
    ("focal_context", "fast", r"execution.focal_context='fast' must be one of \('reference', 'fused'"),
    ("remat", "matmuls", r"execution.remat='matmuls' must be one of \('none', 'block', 'dots'\)"),
    ("f_align", 0, r"execution.f_align=0 must be an int >= 1"),
    ("chunk_elements", -1, r"execution.chunk_elements=-1 must be 'auto', 0 or a positive int"),
])
def test_a_bad_switch_is_named_with_its_choices_by_the_config_check_and_the_model(name, value, message):
  config = default.get_config()
  config.execution[name] = value
  with pytest.raises(ValueError, match=message):
    config_check.check_values(config)
  with pytest.raises(ValueError, match=message):
    create_model("focalnet_tiny_srf", **TINY, execution=Execution(**{name: value}))


def test_resolve_makes_auto_and_the_remat_aliases_concrete_and_keeps_the_rest():
  resolved = Execution(remat=True).resolve()
  assert resolved.depthwise in ("native", "shift") and resolved.remat == "block"  # this is a CPU
  assert resolved.chunk_elements == "auto"  # chunking's 'auto' depends on train vs inference: kept
  assert resolved.resolve() == resolved
  assert Execution(**OTHER).resolve() == Execution(**OTHER)
  assert hash(resolved) == hash(Execution(remat="block").resolve())  # hashable: a static module field


def test_former_model_kwargs_warn_and_build_the_same_model():
  new = create_model("focalnet_tiny_srf", **TINY, execution=Execution(depthwise="xla", remat="dots", f_align=8))
  with pytest.warns(FutureWarning) as warned:
    old = create_model("focalnet_tiny_srf", **TINY, depthwise_impl="xla", remat="dots", f_align=8)
  assert old.execution == new.execution
  former = (("depthwise_impl", "depthwise", "xla"), ("remat", "remat", "dots"), ("f_align", "f_align", 8))
  assert [str(w.message) for w in warned] == [
      f"create_model(..., {key}={value!r}) is deprecated and will be removed in the next release; pass "
      f"execution=Execution({field}={value!r}) instead (focalnet_jax.model.Execution, docs/execution.md)."
      for key, field, value in former]
  assert {w.filename for w in warned} == {__file__}  # reported at the caller's line
  with pytest.warns(FutureWarning, match=r"create_backbone\(\.\.\., focal_context_impl='fused'\)"):
    backbone = create_backbone("focalnet_tiny_srf", embed_dim=8, depths=(1, 1), out_indices=(0, 1),
                               focal_context_impl="fused")
  assert backbone.execution.focal_context == "fused"
  # A dict of fields (a config's `execution`, JSON) is taken too; a misspelt switch is named.
  assert create_model("focalnet_tiny_srf", **TINY, execution={"remat": "dots"}).execution.remat == "dots"
  with pytest.raises(ValueError, match="'remats' is not an execution switch; the switches are depthwise, "):
    create_model("focalnet_tiny_srf", execution={"remats": "dots"})


def test_former_config_keys_warn_naming_the_new_key_and_still_apply():
  with pytest.warns(FutureWarning) as warned:
    model, overrides = build_model(load(CONFIG, "--config.model.depthwise_impl=xla",
                                        "--config.model.focal_context_impl=fused", "--config.model.remat=dots",
                                        "--config.model.f_align=8", "--config.model.chunk_elements=0"), 1000)
  assert model.execution == Execution(**OTHER)
  messages = [str(w.message) for w in warned if str(w.message).startswith("--config.model.")]
  assert len(messages) == len(OTHER) and messages[0] == (
      "--config.model.depthwise_impl='xla' is deprecated and will be removed in the next release; use "
      "--config.execution.depthwise='xla' instead (docs/execution.md).")
  assert overrides == {"num_classes": 1000, "dtype": "bfloat16", "param_dtype": "float32"}  # not architecture
  with pytest.raises(ValueError, match=r"model.f_align=0 must be an int >= 1"):
    config_check.check_values(load(CONFIG, "--config.model.f_align=0"))
  with pytest.raises(ValueError, match=r"model.remat='dots' \(deprecated\) and execution.remat='block' disagree"):
    config_check.execution_of(load(CONFIG, "--config.model.remat=dots", "--config.execution.remat=block"))


def test_benchmark_flags_are_the_switches_and_the_former_names_still_work(tmp_path):
  from focalnet_jax.tools import benchmark

  flags = {(a.dest, option) for a in benchmark.parser()._actions for option in a.option_strings}  # noqa: SLF001
  for name in execution_lib.field_names():
    assert (name, f"--{name.replace('_', '-')}") in flags
  args = benchmark.parser().parse_args(["--config", CONFIG, "--focal-context", "fused", "--f-align", "8",
                                        "--chunk-elements", "0"])
  config = benchmark.benchmark_config(args, 32, 0)
  assert execution_lib.from_mapping(config.execution.to_dict()) == Execution(
      focal_context="fused", f_align=8, chunk_elements=0)  # unset switches keep the config's
  with pytest.warns(FutureWarning, match="--depthwise-impl is deprecated .* use --depthwise instead"):
    args = benchmark.parser().parse_args(["--config", CONFIG, "--depthwise-impl", "xla"])
  assert benchmark.benchmark_config(args, 32, 0).execution.depthwise == "xla"


def _as_written_before_execution(meta: dict) -> dict:
  """`meta` as the trainer wrote it before `Execution` (commit 03d2a58): the switches as
  config.model keys (their defaults then: None, None, 'none', 1, 'auto'), no config.execution, and
  the recorded execution under the former names."""
  meta = json.loads(json.dumps(meta))
  del meta["config"]["execution"]
  meta["config"]["model"].update(depthwise_impl="xla", focal_context_impl=None, remat="dots", f_align=1,
                                 chunk_elements="auto")
  meta["execution"] = {"chunk_elements": "auto", "depthwise_impl": "xla", "f_align": 1,
                       "focal_context_impl": "reference", "remat": "dots"}
  return meta


@pytest.mark.usefixtures("compilation_cache")
def test_a_checkpoint_written_before_execution_resumes_and_loads(tmp_path):
  workdir = tmp_path / "run"
  data = train_utils.TinyData()
  config = train_utils.tiny_config(total_steps=2, checkpoint_every_steps=1, **{"execution.depthwise": "xla",
                                                                                "execution.remat": "dots"})
  trainer.train_and_evaluate(config, str(workdir), data=data)
  # Step 1 as the former code wrote it; step 2 gone, so the rerun resumes from step 1.
  shutil.rmtree(workdir / "checkpoints" / "2")
  (meta_path,) = glob.glob(str(workdir / "checkpoints" / "1" / "meta" / "*metadata"))
  with open(meta_path) as f:
    old = _as_written_before_execution(json.load(f))
  with open(meta_path, "w") as f:
    json.dump(old, f)
  with open(workdir / "config.json", "w") as f:
    json.dump(old["config"], f)
  loaded = evaluation.as_pretrained(str(workdir), step=1)
  assert loaded.info.meta["execution"]["depthwise_impl"] == "xla"
  logits = loaded.model.apply({"params": loaded.params}, jnp.zeros((2, 8, 8, 3)))
  assert logits.shape == (2, train_utils.NUM_CLASSES) and np.isfinite(np.asarray(logits)).all()
  # The same run under the new keys, and under the former ones (with a warning), continues it.
  result = trainer.train_and_evaluate(config, str(workdir), data=data)
  assert result["step"] == 2
  with open(workdir / "config_history.jsonl") as f:
    history = [json.loads(line) for line in f]
  assert [h["start_step"] for h in history] == [0, 1]
  shutil.rmtree(workdir / "checkpoints" / "2")
  former = train_utils.tiny_config(total_steps=2, checkpoint_every_steps=1, **{"model.depthwise_impl": "xla",
                                                                                "model.remat": "dots"})
  with pytest.warns(FutureWarning, match="use --config.execution.remat='dots'"):
    assert trainer.train_and_evaluate(former, str(workdir), data=data)["step"] == 2


def test_reference_execution_is_the_plain_one():
  model = create_model("focalnet_tiny_srf", **TINY, execution=Execution(**{**OTHER, "depthwise": "shift"}))
  assert model.with_reference_execution().execution == Execution.reference() == Execution(
      depthwise="xla", focal_context="reference", remat="none", f_align=1, chunk_elements=0)
  assert model.with_reference_execution().embed_dim == model.embed_dim  # the same network
