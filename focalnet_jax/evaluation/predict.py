"""Top-k predictions for single image files, through the eval transform (timm's pixels, no TensorFlow)."""
from __future__ import annotations

import os
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from focalnet_jax.evaluation.report import as_pretrained, num_classes_of
from focalnet_jax.train import config_check
from focalnet_jax.train import eval_step as eval_lib
from focalnet_jax.weights import Pretrained


def preprocess_files(paths: Sequence[str], config: ml_collections.ConfigDict) -> np.ndarray:
  """The eval transform (resize, centre crop, normalise) on image files, as timm's, without TensorFlow
  (`focalnet_jax.data.load_eval_images`; the tf.data eval pipeline gives the same pixels)."""
  from focalnet_jax.data.eval_images import load_eval_images  # noqa: PLC0415

  return load_eval_images(paths, config.image_size, config.crop_ratio, config.interpolation,
                          config.aug.mean, config.aug.std)


def top_k(logits: np.ndarray, class_names: Sequence[str], k: int = 5) -> list[list[tuple[str, float]]]:
  """Per row: the k most probable (class name, probability), most probable first."""
  if not np.all(np.isfinite(logits)):
    raise FloatingPointError(f"{int(np.sum(~np.all(np.isfinite(logits), -1)))} of {len(logits)} images gave "
                             "non-finite logits (NaN or inf): no prediction is reported. Check the checkpoint "
                             "and the image, or predict in float32 (--dtype float32).")
  probs = np.asarray(jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1))
  order = np.argsort(-probs, axis=-1)[:, :k]
  return [[(class_names[i], float(row[i])) for i in idx] for row, idx in zip(probs, order)]


def predict_files(checkpoint_or_path: Pretrained | str, image_paths: Sequence[str],
                  config: ml_collections.ConfigDict, *, ema: bool = False,
                  k: int = 5) -> list[list[tuple[str, float]]]:
  """Top-k (class, probability) for each image file, from a checkpoint (a path, or one opened by
  `focalnet_jax.from_pretrained`, whose class names label the classes); `config` gives the eval
  transform (image_size, crop_ratio, interpolation, mean/std; `evaluation.eval_config` makes it
  the weights' own)."""
  for p in image_paths:
    if not os.path.isfile(p):
      raise FileNotFoundError(f"No image file at {p!r}.")
  loaded = as_pretrained(checkpoint_or_path, ema=ema)
  num_classes_of(loaded.params)  # a clear error for a model without a head
  images = preprocess_files(image_paths, config)
  logits_fn = eval_lib.model_logits_fn(loaded.model, config_check.execution_of(config).chunk_elements)
  logits = jax.jit(logits_fn)(loaded.params, jnp.asarray(images))
  return top_k(np.asarray(logits), loaded.info.class_names, k)
