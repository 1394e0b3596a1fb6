"""The dense-prediction wiring: FPN neck, Semantic FPN head and SegmentationModel on the backbone
API. A few AdamW steps on the synthetic squares task make the loss fall clearly; odd input sizes
give logits of the input's size equal to the manually padded input's, cropped; the FPN's nearest
upsampling is PyTorch's; the cross-entropy skips the ignore index."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.segmentation import segmentation_tiny
from focalnet_jax.segmentation import FPN, cross_entropy_sums, pixel_cross_entropy, resize_nearest
from focalnet_jax.segmentation.train import build_model, train_and_evaluate
from focalnet_jax.model.backbone import create_backbone
from torch_refs import import_torch


@pytest.fixture(scope="module")
def config():
  return segmentation_tiny.get_config()


def test_a_few_adamw_steps_on_squares_make_the_loss_fall(config):
  config = config.copy_and_resolve_references()
  config.steps = 30
  result = train_and_evaluate(config)
  losses = result["losses"]
  print("losses: " + " ".join(f"{v:.3f}" for v in losses))
  print(f"held-out: loss {result['eval_loss']:.3f}, mIoU {result['eval_miou']:.3f}, "
        f"pixel accuracy {result['eval_pixel_accuracy']:.3f}")
  assert all(np.isfinite(losses))
  assert np.mean(losses[-5:]) < 0.3 * losses[0]
  assert result["eval_loss"] < 0.5 * losses[0] and result["eval_miou"] > 0.6  # all-background: about 0.2


@pytest.mark.parametrize("size", [(45, 70), (33, 33), (64, 96)])
def test_odd_sizes_give_logits_of_the_input_size(config, size):
  model = build_model(config)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  x = np.random.default_rng(0).standard_normal((2, *size, 3)).astype(np.float32)
  logits = model.apply(variables, x)
  assert logits.shape == (2, *size, config.num_classes) and logits.dtype == jnp.float32
  padded = np.zeros((2, -(-size[0] // 32) * 32, -(-size[1] // 32) * 32, 3), np.float32)
  padded[:, :size[0], :size[1]] = x
  np.testing.assert_allclose(logits, model.apply(variables, padded)[:, :size[0], :size[1]], rtol=1e-5, atol=1e-5)


def test_backbone_params_are_the_backbones_own(config):
  """Converted or adapted backbone weights drop in as params['backbone']."""
  model = build_model(config)
  x = jnp.zeros((1, 64, 64, 3))
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
  alone = jax.eval_shape(model.backbone.init, jax.random.key(0), x)["params"]
  assert set(shapes) == {"backbone", "neck", "head"}
  assert jax.tree.map(lambda s: s.shape, shapes["backbone"]) == jax.tree.map(lambda s: s.shape, alone)


def test_fpn_keeps_strides_and_sums_top_down():
  maps = [jnp.ones((1, 16 // 2**i, 24 // 2**i, 8 * 2**i)) for i in range(4)]
  fpn = FPN(channels=12)
  variables = fpn.init(jax.random.key(0), maps)
  out = fpn.apply(variables, maps)
  assert [o.shape for o in out] == [(1, 16, 24, 12), (1, 8, 12, 12), (1, 4, 6, 12), (1, 2, 3, 12)]
  # With identity-like output convs zeroed but for their bias, each level is its lateral plus all coarser ones.
  params = jax.tree.map(jnp.zeros_like, variables["params"])
  for i in range(4):
    params[f"lateral_{i}"]["bias"] = jnp.full(12, float(10**i))
    params[f"output_{i}"]["kernel"] = params[f"output_{i}"]["kernel"].at[1, 1].set(jnp.eye(12))
  out = fpn.apply({"params": params}, maps)
  for i, o in enumerate(out):
    np.testing.assert_allclose(o, sum(10**k for k in range(i, 4)))


def test_nearest_resize_matches_pytorch():
  torch = import_torch()
  x = np.random.default_rng(1).standard_normal((1, 5, 7, 3)).astype(np.float32)
  for size in ((10, 14), (9, 13), (3, 4)):
    ref = torch.nn.functional.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2)), size=size, mode="nearest")
    np.testing.assert_array_equal(resize_nearest(jnp.asarray(x), size), ref.numpy().transpose(0, 2, 3, 1))


def test_cross_entropy_skips_the_ignore_index():
  rng = np.random.default_rng(2)
  logits = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
  labels = rng.integers(0, 5, (2, 3, 4)).astype(np.int32)
  labels[0, 0] = 255
  valid = labels != 255
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  expected = -np.take_along_axis(log_probs, np.where(valid, labels, 0)[..., None], -1)[..., 0][valid]
  total, count = cross_entropy_sums(logits, labels, 255)
  assert int(count) == valid.sum() == 20
  np.testing.assert_allclose(total, expected.sum(), rtol=1e-5)
  np.testing.assert_allclose(pixel_cross_entropy(logits, labels, 255), expected.mean(), rtol=1e-5)
  assert float(pixel_cross_entropy(logits, np.full_like(labels, 255), 255)) == 0.0


def test_head_stride_follows_the_first_output(config):
  """Without stage 0 the head's logits are at stride 8, still upsampled to the input size."""
  backbone = create_backbone("focalnet_tiny_srf", out_indices=(1, 2, 3), **config.model.overrides.to_dict())
  model = build_model(config).clone(backbone=backbone)
  x = jnp.zeros((1, 40, 72, 3))
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  assert jax.eval_shape(model.apply, shapes, x).shape == (1, 40, 72, config.num_classes)
