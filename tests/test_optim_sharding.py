"""The learning-rate schedule, the weight-decay mask and the FSDP sharding rule."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import train_utils
from focalnet_jax.train import optim, sharding
from focalnet_jax.train.state import build_model


def test_schedule_warms_up_then_cosine_to_min():
  s = optim.TrainingSchedule(steps_per_epoch=10, total_steps=100, warmup_steps=20, lr=1e-3, warmup_lr=1e-6, min_lr=1e-5)
  f = optim.lr_schedule(s)
  assert float(f(0)) == pytest.approx(1e-6, rel=1e-4)
  assert float(f(10)) == pytest.approx((1e-6 + 1e-3) / 2, rel=1e-4)  # linear, per step
  assert float(f(20)) == pytest.approx(1e-3, rel=1e-5)
  assert float(f(60)) == pytest.approx((1e-3 + 1e-5) / 2, rel=1e-4)  # cosine midpoint
  assert float(f(100)) == pytest.approx(1e-5, rel=1e-4)


def test_weight_decay_skips_norms_biases_and_gammas():
  config = train_utils.tiny_config(**{"model.use_layerscale": True})
  model, _ = build_model(config, 5)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))["params"]
  mask = optim.decay_mask(params)
  block = mask["layers_0"]["blocks_0"]
  assert mask["head"]["kernel"] and not mask["head"]["bias"]
  assert block["mlp"]["fc1"]["kernel"] and block["modulation"]["focal_layers_0"]
  assert not block["norm1"]["scale"] and not block["gamma_1"] and not mask["norm"]["bias"]


def test_fsdp_rule():
  assert sharding.fsdp_spec((96, 384), 4, 16) == P(None, "fsdp")  # largest divisible dim
  assert sharding.fsdp_spec((3, 3, 1, 96), 4, 16) == P(None, None, None, "fsdp")
  assert sharding.fsdp_spec((384, 10), 4, 16) == P("fsdp", None)
  assert sharding.fsdp_spec((7, 9), 4, 16) == P()  # nothing divides: replicate
  assert sharding.fsdp_spec((96,), 4, 1000) == P()  # small: replicate
  assert sharding.fsdp_spec((96, 384), 1, 16) == P()


def test_mesh_sizes():
  assert sharding.mesh_shape(-1, 1, 8) == (8, 1)
  assert sharding.mesh_shape(2, -1, 8) == (2, 4)
  with pytest.raises(ValueError, match="divide"):
    sharding.mesh_shape(3, -1, 8)
  with pytest.raises(ValueError, match="needs 16 devices"):
    sharding.mesh_shape(4, 4, 8)
  mesh = sharding.make_mesh(2, 4)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4}
  x = jax.device_put(np.zeros((16, 8)), sharding.batch_sharding(mesh))
  assert len(x.sharding.device_set) == 8 and x.addressable_shards[0].data.shape == (2, 8)
