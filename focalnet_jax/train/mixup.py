"""Mixup, CutMix and label smoothing on device, inside the jitted train step (timm semantics).

One lambda per batch ("batch" mode): each example is mixed with its mirror in the batch
(example i with example B-1-i). With both alphas > 0 a batch uses CutMix with probability
`switch_prob`, else Mixup; `prob` is the chance that a batch is mixed at all. CutMix pastes a
box whose side is sqrt(1 - lambda) of the image's, centred uniformly and clipped at the
border, then sets lambda to the share of pixels actually kept. Targets are label-smoothed
one-hots (off = s / K, on = 1 - s + s / K) mixed with the same lambda. `mix_batch` is `mix` with
its draws given (tests/test_augment_parity.py checks it against timm's `Mixup`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def smooth_one_hot(labels: jax.Array, num_classes: int, smoothing: float) -> jax.Array:
  """One-hot targets with `smoothing` spread evenly over all classes (rows sum to one)."""
  # The on and off values in double precision, as timm's `mixup_target`, then float32: summed in
  # float32 the on value is one ulp lower than timm's.
  off = smoothing / num_classes
  on = 1.0 - smoothing + off
  return jnp.where(jax.nn.one_hot(labels, num_classes, dtype=jnp.bool_), on, off).astype(jnp.float32)


def cutmix_box(rng: jax.Array, lam: jax.Array, height: int, width: int) -> tuple[jax.Array, jax.Array]:
  """(mask, corrected lam): mask (H, W) is True inside the box taken from the other image."""
  return cutmix_box_at(lam, *_box_centre(rng, height, width), height, width)


def _box_centre(rng: jax.Array, height: int, width: int) -> tuple[jax.Array, jax.Array]:
  """A CutMix box centre, uniform over the pixels (timm's np.random.randint(0, side))."""
  ky, kx = jax.random.split(rng)
  return jax.random.randint(ky, (), 0, height), jax.random.randint(kx, (), 0, width)


def cutmix_box_at(lam: jax.Array, cy: jax.Array, cx: jax.Array, height: int,
                  width: int) -> tuple[jax.Array, jax.Array]:
  """`cutmix_box` centred at (cy, cx): timm's `rand_bbox` and `cutmix_bbox_and_lam` with the centre given.

  The box is int(side * sqrt(1 - lam)) on each side, from centre - cut // 2 to centre + (cut + 1) // 2
  (so odd cuts keep their size), clipped at the border; lam becomes the share of pixels kept.
  """
  cut = jnp.sqrt(1.0 - lam)
  cut_h = jnp.floor(height * cut).astype(jnp.int32)
  cut_w = jnp.floor(width * cut).astype(jnp.int32)
  y0, y1 = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + (cut_h + 1) // 2, 0, height)
  x0, x1 = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + (cut_w + 1) // 2, 0, width)
  ys = jnp.arange(height)[:, None]
  xs = jnp.arange(width)[None, :]
  mask = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
  lam = 1.0 - ((y1 - y0) * (x1 - x0)).astype(jnp.float32) / (height * width)
  return mask, lam


def mix_batch(images: jax.Array, labels: jax.Array, lam: jax.Array, use_cutmix: jax.Array, cy: jax.Array,
              cx: jax.Array, *, num_classes: int,
              label_smoothing: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`mix` with its draws given: lambda, CutMix or Mixup, and the CutMix box centre (ignored for Mixup).

  timm's `Mixup` in batch mode (`_mix_batch`, then `mixup_target`) once its random draws are made;
  returns (images, soft targets (B, K), lambda after the CutMix correction).
  """
  targets = smooth_one_hot(labels, num_classes, label_smoothing)
  lam = jnp.asarray(lam, jnp.float32)
  flipped = images[::-1]
  box, lam_box = cutmix_box_at(lam, cy, cx, images.shape[1], images.shape[2])
  cut_images = jnp.where(box[None, :, :, None], flipped, images)
  mixed_images = images * lam.astype(images.dtype) + flipped * (1.0 - lam).astype(images.dtype)
  images = jnp.where(use_cutmix, cut_images, mixed_images)
  lam = jnp.where(use_cutmix, lam_box, lam)
  targets = targets * lam + targets[::-1] * (1.0 - lam)
  return images, targets, lam


def mix(
    rng: jax.Array,
    images: jax.Array,
    labels: jax.Array,
    *,
    num_classes: int,
    mixup_alpha: float,
    cutmix_alpha: float,
    prob: float,
    switch_prob: float,
    label_smoothing: float,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Mixes a batch: returns (images, soft targets (B, K), lambda). NHWC images."""
  targets = smooth_one_hot(labels, num_classes, label_smoothing)
  if (mixup_alpha <= 0 and cutmix_alpha <= 0) or prob <= 0:
    return images, targets, jnp.ones((), jnp.float32)
  k_apply, k_switch, k_mix, k_cut, k_box = jax.random.split(rng, 5)
  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cutmix = jax.random.uniform(k_switch) < switch_prob
  else:
    use_cutmix = jnp.asarray(cutmix_alpha > 0)
  lam_mixup = jax.random.beta(k_mix, max(mixup_alpha, 1e-3), max(mixup_alpha, 1e-3))
  lam_cutmix = jax.random.beta(k_cut, max(cutmix_alpha, 1e-3), max(cutmix_alpha, 1e-3))
  lam = jnp.where(use_cutmix, lam_cutmix, lam_mixup).astype(jnp.float32)
  lam = jnp.where(jax.random.uniform(k_apply) < prob, lam, 1.0)
  cy, cx = _box_centre(k_box, images.shape[1], images.shape[2])
  return mix_batch(images, labels, lam, use_cutmix, cy, cx, num_classes=num_classes,
                   label_smoothing=label_smoothing)
