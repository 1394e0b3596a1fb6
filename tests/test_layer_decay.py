"""Layer-wise lr decay: the per-parameter scales equal timm's `param_groups_layer_decay` for its
FocalNet on converted parameter names, the optimizer applies them, and the config refuses values
outside (0, 1]."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import default
from focalnet_jax import create_model
from focalnet_jax.weights.layouts import torch_key
from focalnet_jax.train import config_check, layer_decay, optim
from torch_refs import import_timm

OURS = dict(embed_dim=8, depths=(1, 2, 1), num_classes=5)


def our_params(**overrides):
  model = create_model("focalnet_tiny_srf", **{**OURS, **overrides})
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))["params"]


def flat(tree):
  return {tuple(str(k.key) for k in path): v for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize("decay", [0.75, 0.9])
def test_lr_scales_equal_timms_param_groups_layer_decay(decay):
  import_timm()
  from timm.models import focalnet as timm_focalnet
  from timm.optim import param_groups_layer_decay

  ref = timm_focalnet.FocalNet(**OURS)
  want = {}
  for group in param_groups_layer_decay(ref, weight_decay=0.05, layer_decay=decay):
    names = {id(p): n for n, p in ref.named_parameters()}
    for p in group["params"]:
      want[names[id(p)]] = group["lr_scale"]
  got = {torch_key(path, "timm"): scale for path, scale in flat(layer_decay.lr_scales(our_params(), decay)).items()}
  assert set(got) == set(want)  # every parameter of both models, named alike
  for name in want:
    assert got[name] == pytest.approx(want[name], rel=1e-12), name
  assert got["head.fc.weight"] == 1.0 and got["stem.proj.weight"] == pytest.approx(decay ** (len(set(want.values())) - 1))


def test_layer_ids_follow_the_forward_order():
  ids = flat(layer_decay.layer_ids(our_params()))
  by_layer = {}
  for path, i in ids.items():
    by_layer.setdefault(i, set()).add(path[:2])
  assert by_layer[0] == {("patch_embed", "proj"), ("patch_embed", "norm")}
  # stage 0 block 0; stage 1 block 0 with the downsample that feeds it; ...; the final norm with the
  # last block; the head.
  assert by_layer[1] == {("layers_0", "blocks_0")}
  assert by_layer[2] == {("layers_1", "blocks_0"), ("layers_0", "downsample")}
  assert by_layer[3] == {("layers_1", "blocks_1")}
  assert by_layer[4] == {("layers_2", "blocks_0"), ("layers_1", "downsample"), ("norm", "scale"), ("norm", "bias")}
  assert by_layer[5] == {("head", "kernel"), ("head", "bias")}


def test_the_optimizer_scales_each_update_by_its_layer():
  config = default.get_config()
  config.grad_clip_norm = 0.0
  params = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), our_params())
  grads = jax.tree.map(jnp.ones_like, params)
  updates = {}
  for decay in (1.0, 0.5):
    config.optim.layer_decay = decay
    tx = optim.make_optimizer(config, optax.constant_schedule(1e-3))
    updates[decay], _ = tx.update(grads, tx.init(params), params)
  scales = layer_decay.lr_scales(params, 0.5)
  for off, on, s in zip(*(jax.tree_util.tree_leaves(t) for t in (updates[1.0], updates[0.5], scales))):
    np.testing.assert_allclose(on, s * off, rtol=1e-6)
  assert min(jax.tree_util.tree_leaves(scales)) == 0.5 ** 5  # 6 layers: stem at decay^5


@pytest.mark.parametrize("value", [0.0, -0.5, 1.5, float("nan")])
def test_config_refuses_a_layer_decay_outside_0_1(value):
  config = default.get_config()
  config.optim.layer_decay = value
  with pytest.raises(ValueError, match=r"optim.layer_decay=.* must be a number in \(0, 1\]"):
    config_check.check_values(config)
  config.optim.layer_decay = 0.75
  config_check.check_values(config)
