"""Every config loads, builds its model and resolves its derived values after overrides."""
from __future__ import annotations

import glob
import json
import os

import jax
import jax.numpy as jnp
import pytest
from absl import flags
from ml_collections import config_flags

import train_utils
from focalnet_jax.model import Execution, variants
from focalnet_jax.train import optim
from focalnet_jax.train.state import build_model

import configs.default  # noqa: E402  (train_utils puts the repository on sys.path)
import configs.finetune  # noqa: E402

CONFIGS = sorted(p for p in glob.glob(os.path.join(train_utils.ROOT, "configs", "*.py"))
                 if not p.endswith("__init__.py"))
DEFAULT = os.path.join(train_utils.ROOT, "configs", "default.py")
FINETUNE = os.path.join(train_utils.ROOT, "configs", "finetune.py")
# Every config a user can name: each file, default.py once per ImageNet-1K variant (default.py:<variant>)
# and finetune.py once per 22K variant (finetune.py:<variant>).
SPECS = (CONFIGS + [f"{DEFAULT}:{name}" for name in configs.default.PAPER_TOP1]
         + [f"{FINETUNE}:{name}" for name in configs.finetune.IMAGE_SIZE])
IMAGENET_TRAIN = 1_281_167


def load(path, *overrides):
  """The config as train.py sees it: parsed by config_flags with lock_config=True."""
  argv = ["train.py", f"--config={path}", *overrides]
  fv = flags.FlagValues()
  # Overrides are found in argv when the flag is defined (sys.argv by default).
  config_flags.DEFINE_config_file("config", None, flag_values=fv, lock_config=True, sys_argv=argv)
  fv(argv)
  return fv.config


def test_every_variant_has_a_config():
  names = {os.path.basename(p)[:-3] for p in CONFIGS}
  assert {"default", "quickstart", "focalnet_t", "finetune"} <= names
  # The nine ImageNet-1K variants of the paper are default.py:<variant>, each building that variant.
  assert set(configs.default.PAPER_TOP1) == {n for n in variants.list_models() if n.endswith(("srf", "lrf", "iso"))}
  for name in configs.default.PAPER_TOP1:
    assert load(f"{DEFAULT}:{name}").model.name == name


def test_focalnet_t_is_the_default_recipe_and_an_unknown_variant_is_refused():
  assert load(os.path.join(train_utils.ROOT, "configs", "focalnet_t.py")).to_dict() == load(DEFAULT).to_dict()
  with pytest.raises(flags.IllegalFlagValueError, match="not one of the ImageNet-1K variants.*finetune.py"):
    load(f"{DEFAULT}:focalnet_large_fl3")
  # The 22K models are fine-tuned through finetune.py:<variant>, one per 22K variant.
  assert set(configs.finetune.IMAGE_SIZE) == {n for n in variants.list_models() if n.endswith(("fl3", "fl4"))}


@pytest.mark.parametrize("path", SPECS, ids=lambda p: os.path.basename(p)[:-3] if p.endswith(".py") else
                         os.path.basename(p))
def test_config_loads_and_builds_its_model(path):
  config = load(path)
  with open(path.split(".py:")[0] + ".py" if ".py:" in path else path) as f:
    doc = f.read()
  assert "python train.py --config configs/" in doc  # the docstring says how to run it
  num_classes = 10 if config.dataset == "digits" else 1000
  model, overrides = build_model(config, num_classes)
  assert model.num_classes == num_classes
  model.check_image_size(config.image_size, config.image_size)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, config.image_size, config.image_size, 3))) \
      if config.dataset == "digits" else None
  if shapes is not None:
    assert shapes["params"]["head"]["kernel"].shape[-1] == 10
  if path.startswith(FINETUNE):
    assert config.model.name.endswith(("fl3", "fl4")) and config.base_lr < 5e-4
    assert config.image_size == variants.default_image_size(config.model.name)


@pytest.mark.parametrize("name", ["default.py:focalnet_base_iso", "finetune.py:focalnet_large_fl4"])
def test_big_models_build_abstractly(name):
  config = load(os.path.join(train_utils.ROOT, "configs", name))
  model, _ = build_model(config, 1000)
  size = 32 * (2 if "iso" not in name else 1)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3), jnp.float32))
  assert shapes["params"]["head"]["kernel"].shape[-1] == 1000


def test_derived_values_follow_overrides():
  path = os.path.join(train_utils.ROOT, "configs", "focalnet_t.py")
  base = optim.resolve_schedule(load(path), IMAGENET_TRAIN)
  assert base.steps_per_epoch == IMAGENET_TRAIN // 1024 and base.total_steps == 300 * base.steps_per_epoch
  assert base.lr == pytest.approx(1e-3) and base.warmup_steps == 20 * base.steps_per_epoch
  small = optim.resolve_schedule(load(path, "--config.batch_size=256"), IMAGENET_TRAIN)
  assert small.lr == pytest.approx(2.5e-4) and small.min_lr == pytest.approx(2.5e-6)
  assert small.warmup_lr == pytest.approx(2.5e-7)
  assert small.steps_per_epoch == IMAGENET_TRAIN // 256 and small.total_steps == 300 * small.steps_per_epoch
  fixed = optim.resolve_schedule(load(path, "--config.total_steps=1000", "--config.warmup_epochs=0"),
                                 IMAGENET_TRAIN)
  assert fixed.total_steps == 1000 and fixed.warmup_steps == 0


def test_model_fields_override_the_variant():
  path = os.path.join(train_utils.ROOT, "configs", "focalnet_t.py")
  config = load(path, "--config.model.focal_levels=3", "--config.model.drop_path_rate=0.1",
                "--config.model.name=focalnet_small_srf")
  model, overrides = build_model(config, 1000)
  assert model.focal_levels == 3 and model.drop_path_rate == 0.1 and tuple(model.depths) == (2, 2, 18, 2)
  assert overrides["focal_levels"] == 3 and "depths" not in overrides


def test_misspelt_override_is_an_error():
  path = os.path.join(train_utils.ROOT, "configs", "focalnet_t.py")
  with pytest.raises(Exception, match='Did you mean "batch_size"'):
    load(path, "--config.batch_sise=256")
  with pytest.raises(Exception):
    load(path, "--config.model.drop_path=0.1")


def test_execution_fields_reach_the_model_but_not_its_recorded_architecture():
  """How the model runs (depthwise and focal-context implementations, remat) is applied, but a
  checkpoint's model_overrides describe only the architecture: elsewhere, the machine chooses."""
  path = os.path.join(train_utils.ROOT, "configs", "focalnet_t.py")
  config = load(path, "--config.execution.depthwise=xla", "--config.execution.focal_context=fused",
                "--config.execution.remat=dots", "--config.execution.chunk_elements=0",
                "--config.model.focal_levels=3")
  model, overrides = build_model(config, 1000)
  assert model.execution == Execution(depthwise="xla", focal_context="fused", remat="dots", chunk_elements=0)
  assert overrides == {"focal_levels": 3, "num_classes": 1000, "dtype": "bfloat16", "param_dtype": "float32"}


def test_norm_dtype_reaches_the_model_and_is_recorded_with_its_architecture():
  """What the LayerNorms write changes values, so, like `dtype`, it is part of the model a
  checkpoint records, and a resumed run may not change it; float32 (None) is the default."""
  from focalnet_jax.train import config_check

  path = os.path.join(train_utils.ROOT, "configs", "focalnet_t.py")
  config = load(path, "--config.model.norm_dtype=bfloat16")
  config_check.check_values(config)
  model, overrides = build_model(config, 1000)
  assert model.norm_dtype == jnp.bfloat16 and overrides["norm_dtype"] == "bfloat16"
  default, default_overrides = build_model(load(path), 1000)
  assert default.norm_dtype is None and "norm_dtype" not in default_overrides
  saved = json.loads(load(path).to_json_best_effort())
  assert config_check.config_changes(saved, config) == [("model.norm_dtype", None, "bfloat16")]
  with pytest.raises(ValueError, match=r"model.norm_dtype='bf16' must be None \(LayerNorms write float32\) or "
                                       r"'float32' or 'bfloat16' \(--config.model.norm_dtype=...\)"):
    config_check.check_values(load(path, "--config.model.norm_dtype=bf16"))
