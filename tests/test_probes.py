"""Frozen-feature protocols: DINO's weighted kNN against a per-example loop, the linear probe's
regularisation choice, features equal to the model's pooled output under sharding and padding,
and the per-(checkpoint, split, preprocessing) cache that a second protocol reuses."""
import math

import jax.numpy as jnp
import numpy as np
import pytest

from focalnet_jax import evaluation
from focalnet_jax.evaluation import features, probes
from test_eval import colour_folder, colour_recogniser  # noqa: F401 - fixtures


def loop_knn(train_x, train_y, x, num_classes, k, t):
  """DINO's vote for one example, written out: the k most similar by cosine, weight exp(sim / T)."""
  sims = [float(np.dot(x, tx) / (np.linalg.norm(x) * np.linalg.norm(tx))) for tx in train_x]
  order = sorted(range(len(sims)), key=lambda i: -sims[i])[:k]
  votes = [0.0] * num_classes
  for i in order:
    votes[train_y[i]] += math.exp(sims[i] / t)
  return votes


def test_knn_scores_match_a_per_example_loop():
  rng = np.random.default_rng(0)
  train_x, test_x = rng.normal(size=(300, 16)), rng.normal(size=(600, 16))  # 3 chunks of test rows
  train_y = rng.integers(0, 7, 300)
  got = probes.knn_scores(train_x, train_y, test_x, 7, k=20, temperature=0.07)
  for row in (0, 255, 256, 599):
    np.testing.assert_allclose(got[row], loop_knn(train_x, train_y, test_x[row], 7, 20, 0.07), rtol=1e-5)
  # A hand case: two neighbours of class 1 at cosine 1 and 0, one of class 0 at cosine -1; k=2.
  scores = probes.knn_scores(np.array([[1.0, 0], [0, 1.0], [-1.0, 0]]), np.array([1, 1, 0]),
                             np.array([[2.0, 0]]), 2, k=2, temperature=0.5)
  np.testing.assert_allclose(scores, [[0.0, math.exp(2) + math.exp(0)]], rtol=1e-6)


def test_linear_probe_chooses_c_on_the_held_out_part_and_scores_the_test_split():
  pytest.importorskip("sklearn")
  rng = np.random.default_rng(1)
  centres = rng.normal(0, 3, (4, 8))
  y_train, y_test = rng.integers(0, 4, 400), rng.integers(0, 4, 200)
  data = {"train": (centres[y_train] + rng.normal(size=(400, 8)), y_train),
          "test": (centres[y_test] + rng.normal(size=(200, 8)), y_test)}
  from configs import default
  probe = default.get_config().probe
  out = probes.linear(data, 5, probe, seed=0)  # class 4 never occurs: it must never be predicted
  assert set(out["holdout_top1_by_C"]) == {str(float(c)) for c in probe.linear_c}
  assert out["holdout_top1_by_C"][str(out["C"])] == max(out["holdout_top1_by_C"].values())
  assert out["top1"] > 0.9 and out["top5"] == 1.0


def test_features_are_the_pooled_output_and_a_second_protocol_reuses_them(tmp_path, colour_folder, monkeypatch):  # noqa: F811
  pytest.importorskip("tensorflow")  # folders are read by the tf.data pipeline
  pytest.importorskip("sklearn")
  ckpt, config = colour_recogniser(tmp_path)
  config.update(dataset=f"folder:{colour_folder}", train_split="val", eval_split="val")
  loaded = evaluation.as_pretrained(str(ckpt))
  cache = str(tmp_path / "features")
  report = probes.evaluate_frozen(loaded, config, "knn", ema=False, cache_dir=cache)
  # 7 images in one padded batch of 8; the red image labelled 'blue' is outvoted by the two red ones.
  assert report["num_train"] == report["num_examples"] == 7 and report["top1"] == pytest.approx(6 / 7)
  assert report["features_cached"] == {"train": False, "test": True}  # one split: extracted once
  feats, labels = features._read_cache(features.cache_path(cache, loaded, config, "val", False))
  images = np.stack([b["image"][i] for b in evaluation.report.eval_setup(loaded, config).dataset.eval_batches(config)
                     for i in range(len(b["mask"])) if b["mask"][i]])
  pooled = loaded.model.clone(num_classes=0).apply(
      {"params": {k: v for k, v in loaded.params.items() if k != "head"}}, jnp.asarray(images))
  np.testing.assert_allclose(feats, np.asarray(pooled), rtol=1e-5, atol=1e-6)
  assert sorted(labels.tolist()) == [0, 0, 0, 1, 1, 2, 2]

  def no_extraction(*args, **kwargs):
    raise AssertionError("the cached features were extracted again")

  monkeypatch.setattr(features, "extract", no_extraction)
  config.probe.linear_holdout = 0.5  # 7 examples: a stratified held-out part needs one per class
  linear = probes.evaluate_frozen(loaded, config, "linear", ema=False, cache_dir=cache)
  assert linear["features_cached"] == {"train": True, "test": True} and linear["protocol"] == "linear"
  config.image_size = 48  # other preprocessing: other features, not the cached ones
  with pytest.raises(AssertionError, match="extracted again"):
    probes.evaluate_frozen(loaded, config, "knn", ema=False, cache_dir=cache)
