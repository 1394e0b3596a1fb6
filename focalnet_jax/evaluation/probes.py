"""Frozen-feature protocols on the pooled features of `features`: a weighted k-nearest-neighbour
vote and a linear probe, both trained on the train split's features and scored on the eval split's.

kNN as DINO (Caron et al. 2021, `knn_classifier` in facebookresearch/dino): features L2-normalised,
cosine similarity to every training example, the k most similar vote for their class with weight
exp(similarity / T); the class with the most weight wins (k=20, T=0.07 in configs/default.py).

Linear probe: multinomial logistic regression (scikit-learn, L-BFGS) on standardised features. Its
L2 regularisation C is chosen on a held-out, class-stratified part of the train split
(`config.probe.linear_holdout`); the probe is then refitted on the whole train split with that C.
"""
from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

# Test rows scored at once by kNN: bounds the (rows x train examples) similarity matrix.
KNN_ROWS_PER_CHUNK = 256


def _top_k_hits(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
  """Whether each row's label is among its k highest scores (k capped by the class count)."""
  k = min(k, scores.shape[1])
  top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
  return np.any(top == labels[:, None], axis=1)


def knn_scores(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, num_classes: int, *, k: int,
               temperature: float) -> np.ndarray:
  """(test examples, classes) vote weights of the k most cosine-similar training examples."""
  def normalise(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

  train_n, k = normalise(np.asarray(train_x, np.float32)), min(k, len(train_x))
  scores = np.zeros((len(test_x), num_classes), np.float64)
  for s in range(0, len(test_x), KNN_ROWS_PER_CHUNK):
    sim = normalise(np.asarray(test_x[s:s + KNN_ROWS_PER_CHUNK], np.float32)) @ train_n.T
    nearest = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    weights = np.exp(np.take_along_axis(sim, nearest, axis=1).astype(np.float64) / temperature)
    rows = np.repeat(np.arange(len(nearest)), k)
    np.add.at(scores[s:s + KNN_ROWS_PER_CHUNK], (rows, train_y[nearest].ravel()), weights.ravel())
  return scores


def knn(data: dict[str, Any], num_classes: int, probe: ml_collections.ConfigDict) -> dict[str, Any]:
  (train_x, train_y), (test_x, test_y) = data["train"], data["test"]
  scores = knn_scores(train_x, train_y, test_x, num_classes, k=probe.knn_k, temperature=probe.knn_temperature)
  return {"protocol": "knn", "k": probe.knn_k, "temperature": probe.knn_temperature,
          "top1": float(np.mean(np.argmax(scores, 1) == test_y)), "top5": float(np.mean(_top_k_hits(scores, test_y, 5)))}


def linear(data: dict[str, Any], num_classes: int, probe: ml_collections.ConfigDict, seed: int) -> dict[str, Any]:
  from sklearn.linear_model import LogisticRegression  # noqa: PLC0415 (optional: only for this protocol)
  from sklearn.model_selection import train_test_split  # noqa: PLC0415
  from sklearn.pipeline import make_pipeline  # noqa: PLC0415
  from sklearn.preprocessing import StandardScaler  # noqa: PLC0415

  (train_x, train_y), (test_x, test_y) = data["train"], data["test"]

  def fit(c, x, y):
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=probe.linear_max_iter)).fit(x, y)

  fit_x, held_x, fit_y, held_y = train_test_split(train_x, train_y, test_size=probe.linear_holdout,
                                                  stratify=train_y, random_state=seed)
  held_top1 = {float(c): float(fit(c, fit_x, fit_y).score(held_x, held_y)) for c in probe.linear_c}
  best = max(held_top1, key=held_top1.get)  # ties: the first, i.e. the strongest regularisation tried
  clf = fit(best, train_x, train_y)
  scores = np.full((len(test_x), num_classes), -np.inf)
  scores[:, clf.classes_] = clf.predict_log_proba(test_x)  # classes absent from the train split never win
  return {"protocol": "linear", "C": best, "holdout_top1_by_C": {str(c): v for c, v in held_top1.items()},
          "holdout": probe.linear_holdout,
          "top1": float(np.mean(np.argmax(scores, 1) == test_y)), "top5": float(np.mean(_top_k_hits(scores, test_y, 5)))}


def evaluate_frozen(loaded, config: ml_collections.ConfigDict, protocol: str, *, ema: bool,
                    cache_dir: str) -> dict[str, Any]:
  """`protocol` ('knn' or 'linear') on the frozen pooled features of a checkpoint opened by
  `focalnet_jax.from_pretrained`: trained on config.train_split, scored on config.eval_split. The report
  says whether each split's features came from the cache."""
  import time  # noqa: PLC0415

  from focalnet_jax.evaluation import features, report  # noqa: PLC0415

  t0 = time.time()
  data = features.train_and_test_features(loaded, config, ema=ema, cache_dir=cache_dir)
  t1 = time.time()
  n = report.num_classes_of(loaded.params)
  if protocol == "knn":
    result = knn(data, n, config.probe)
  elif protocol == "linear":
    result = linear(data, n, config.probe, config.seed)
  else:
    raise ValueError(f"Unknown protocol {protocol!r}: expected 'knn' or 'linear'.")
  return {"checkpoint": loaded.info.directory, "step": int(loaded.info.step), "ema": ema, "model": loaded.info.variant,
          "dataset": config.dataset, "train_split": config.train_split, "split": config.eval_split,
          "image_size": config.image_size, **result, "num_train": int(len(data["train"][1])),
          "num_examples": int(len(data["test"][1])), "feature_dim": int(data["train"][0].shape[1]),
          "features_cached": {"train": data["train_cached"], "test": data["test_cached"]},
          "feature_seconds": t1 - t0, "probe_seconds": time.time() - t1}
