"""Mixup / CutMix / label smoothing on device (timm semantics)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focalnet_jax.train import mixup

K = 10


def _batch(b=8, s=16):
  images = jnp.broadcast_to(jnp.arange(b, dtype=jnp.float32)[:, None, None, None], (b, s, s, 3))
  return images, jnp.arange(b) % K


def _mix(rng, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, prob=1.0, smoothing=0.1, b=8):
  images, labels = _batch(b)
  return mixup.mix(rng, images, labels, num_classes=K, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha,
                   prob=prob, switch_prob=switch_prob, label_smoothing=smoothing)


def test_label_smoothing_values():
  t = mixup.smooth_one_hot(jnp.array([3]), K, 0.1)
  np.testing.assert_allclose(t[0, 3], 1 - 0.1 + 0.01, rtol=1e-6)
  np.testing.assert_allclose(t[0, 0], 0.01, rtol=1e-6)
  np.testing.assert_allclose(t.sum(), 1.0, rtol=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_targets_sum_to_one_and_mix_the_mirrored_pair(seed):
  images, targets, lam = _mix(jax.random.PRNGKey(seed))
  np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-5)
  # Example i is mixed with example B-1-i, with weights lam and 1 - lam.
  labels = np.arange(8) % K
  expected = (lam * mixup.smooth_one_hot(labels, K, 0.1)
              + (1 - lam) * mixup.smooth_one_hot(labels[::-1], K, 0.1))
  np.testing.assert_allclose(targets, expected, rtol=1e-5, atol=1e-7)
  assert 0.0 <= float(lam) <= 1.0


def test_mixup_blends_whole_images_with_lambda():
  images, _, lam = _mix(jax.random.PRNGKey(0), cutmix_alpha=0.0)
  # Image i was constant i: after mixup it is constant lam*i + (1-lam)*(7-i).
  want = lam * np.arange(8) + (1 - lam) * np.arange(8)[::-1]
  np.testing.assert_allclose(images[:, 0, 0, 0], want, rtol=1e-5)
  assert np.ptp(np.asarray(images[0])) < 1e-5


def test_cutmix_lambda_is_the_kept_area():
  for seed in range(6):
    images, _, lam = _mix(jax.random.PRNGKey(seed), mixup_alpha=0.0)
    kept = float(np.mean(np.asarray(images[0, :, :, 0]) == 0.0))  # image 0 is all zeros, partner all 7
    np.testing.assert_allclose(float(lam), kept, atol=1e-6)
    assert set(np.unique(np.asarray(images[0]))) <= {0.0, 7.0}


def test_cutmix_box_clipped_at_the_border_corrects_lambda():
  # With lam 0.5 the nominal box is 11x11 of 16x16 (area 0.47); clipped boxes are smaller.
  kept = set()
  for seed in range(20):
    mask, lam = mixup.cutmix_box(jax.random.PRNGKey(seed), jnp.float32(0.5), 16, 16)
    np.testing.assert_allclose(float(lam), 1 - np.asarray(mask).mean(), atol=1e-6)
    kept.add(round(float(lam), 4))
  assert max(kept) > 1 - 10 * 10 / 256  # some boxes were clipped


def test_switch_prob_picks_cutmix_or_mixup():
  # switch_prob 1 -> always CutMix: values stay in {i, 7-i}; 0 -> always Mixup.
  images, _, _ = _mix(jax.random.PRNGKey(3), switch_prob=1.0)
  assert set(np.unique(np.asarray(images[1]))) <= {1.0, 6.0}
  images, _, lam = _mix(jax.random.PRNGKey(3), switch_prob=0.0)
  np.testing.assert_allclose(images[1, 0, 0, 0], lam * 1 + (1 - lam) * 6, rtol=1e-5)


def test_off_gives_smoothed_targets_and_untouched_images():
  images, targets, lam = _mix(jax.random.PRNGKey(0), mixup_alpha=0.0, cutmix_alpha=0.0)
  np.testing.assert_array_equal(images, _batch()[0])
  np.testing.assert_allclose(targets, mixup.smooth_one_hot(np.arange(8) % K, K, 0.1))
  assert float(lam) == 1.0
  _, _, lam = _mix(jax.random.PRNGKey(0), prob=0.0)
  assert float(lam) == 1.0


def test_lambda_distribution_and_seed_reproduces():
  lams = np.array([float(_mix(jax.random.PRNGKey(s), cutmix_alpha=0.0)[2]) for s in range(200)])
  # Beta(0.8, 0.8): mean 0.5, U-shaped (more mass near the ends than uniform).
  assert abs(lams.mean() - 0.5) < 0.07
  assert np.mean((lams < 0.1) | (lams > 0.9)) > 0.2
  a = _mix(jax.random.PRNGKey(5))
  b = _mix(jax.random.PRNGKey(5))
  jax.tree.map(np.testing.assert_array_equal, a, b)
  c = _mix(jax.random.PRNGKey(6))
  assert float(a[2]) != float(c[2])


def test_works_inside_jit():
  f = jax.jit(lambda r: _mix(r))
  out = f(jax.random.PRNGKey(1))
  jax.tree.map(np.testing.assert_allclose, out, _mix(jax.random.PRNGKey(1)))
