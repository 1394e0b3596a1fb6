"""Stateless random draws for the tf.data transforms: each a pure function of its seed, an
int32/int64 tensor of shape [2], so a transformed example depends only on (image, seed)."""
from __future__ import annotations

import tensorflow as tf


def split(seed: tf.Tensor, n: int) -> list[tf.Tensor]:
  """`n` independent seeds from one."""
  return tf.unstack(tf.random.experimental.stateless_split(seed, n))


def uniform(seed, shape=(), lo=0.0, hi=1.0) -> tf.Tensor:
  """Uniform float32 in [lo, hi)."""
  return tf.random.stateless_uniform(shape, seed, minval=lo, maxval=hi, dtype=tf.float32)


def randint(seed, upper: tf.Tensor) -> tf.Tensor:
  """Uniform integer in [0, upper] (inclusive), upper a scalar int32 tensor >= 0."""
  u = uniform(seed)
  return tf.minimum(tf.cast(tf.floor(u * tf.cast(upper + 1, tf.float32)), tf.int32), upper)
