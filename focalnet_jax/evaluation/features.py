"""Frozen features: the pooled features (final LayerNorm, mean over tokens: the head's input) of
every example of a split, extracted once on the sharded eval path and cached per (checkpoint,
step, EMA, dataset, split, preprocessing), so a second protocol (`probes`) reuses them.

A cache file is <cache_dir>/features_<dataset>_<split>_step<step>[_ema]_<key>.npz holding
`features` (float32, examples x channels) and `labels`; <key> hashes everything that changes the
features: the checkpoint's path, model and overrides, the compute dtype, the data location and
the eval preprocessing (image size, crop ratio, interpolation, mean, std, digits split seed).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from focalnet_jax.evaluation import report as report_lib
from focalnet_jax.train import config_check
from focalnet_jax.train import eval_step as eval_lib
from focalnet_jax.weights import Pretrained

# The config fields that decide which examples a split holds and which pixels the model sees.
PREPROCESSING = ("dataset", "data_dir", "image_size", "crop_ratio", "interpolation", "digits_split_seed")


def cache_key(loaded: Pretrained, config: ml_collections.ConfigDict, ema: bool) -> str:
  """A short hash of what the features depend on besides (dataset, split, step)."""
  what = {"checkpoint": loaded.info.directory, "model": loaded.info.meta.get("model"), "ema": ema,
          "overrides": loaded.info.meta.get("model_overrides", {}), "dtype": str(loaded.model.dtype),
          "mean": list(config.aug.mean), "std": list(config.aug.std),
          **{k: config.get(k) for k in PREPROCESSING}}
  return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:12]


def cache_path(cache_dir: str, loaded: Pretrained, config: ml_collections.ConfigDict,
               split: str, ema: bool) -> str:
  name = config.dataset.replace("/", "_").replace(":", "_")
  return os.path.join(cache_dir, f"features_{name}_{split}_step{loaded.info.step}{'_ema' if ema else ''}_"
                                 f"{cache_key(loaded, config, ema)}.npz")


def make_feature_step(model, chunk_elements):
  """(params, batch) -> each row's pooled features, label and mask (all processes' rows)."""
  pooled_fn = eval_lib.model_logits_fn(model.clone(num_classes=0), chunk_elements)

  def feature_fn(params, batch):
    features = pooled_fn({k: v for k, v in params.items() if k != "head"}, batch["image"])
    return {"count": jnp.sum(batch["mask"]),
            "examples": {"feature": features.astype(jnp.float32), "label": batch["label"], "mask": batch["mask"]}}

  return feature_fn


def _read_cache(path: str) -> tuple[np.ndarray, np.ndarray] | None:
  if not os.path.isfile(path):
    return None
  try:
    with np.load(path) as f:
      return f["features"], f["labels"]
  except (OSError, ValueError, KeyError) as e:  # a truncated or foreign file: extract again
    logging.warning("Feature cache %s is unreadable (%s); extracting the features again.", path, e)
    return None


def extract(setup: report_lib.EvalSetup, loaded: Pretrained, split: str,
            path: str) -> tuple[np.ndarray, np.ndarray]:
  """The features and labels of every example of `split`, written to the cache file `path`."""
  step = make_feature_step(loaded.model, config_check.execution_of(setup.config).chunk_elements)
  _, rows = report_lib.run_pass(setup, step, split)
  features, labels = rows["feature"], rows["label"].astype(np.int32)
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.npz"
    np.savez(tmp, features=features, labels=labels)
    os.replace(tmp, path)  # a reader never sees a half-written file
  return features, labels


def train_and_test_features(loaded: Pretrained, config: ml_collections.ConfigDict, *, ema: bool,
                            cache_dir: str) -> dict[str, Any]:
  """The features of `config.train_split` (the probe's training data) and `config.eval_split`,
  from the cache where they are there (then the data pipeline is not even built)."""
  if not config.train_split:
    raise ValueError("A frozen-feature protocol trains on config.train_split, which is empty; name the "
                     "split to fit on (e.g. --config.train_split=train).")
  out, setup = {}, None
  for role, split in (("train", config.train_split), ("test", config.eval_split)):
    path = cache_path(cache_dir, loaded, config, split, ema)
    cached = _read_cache(path)
    out[f"{role}_cached"] = cached is not None
    if cached is None:
      setup = setup or report_lib.eval_setup(loaded, config)
      cached = extract(setup, loaded, split, path)
    out[role] = cached
  return out
