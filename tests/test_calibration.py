"""Calibration: ECE (equal-width and equal-mass bins), NLL, Brier score and temperature scaling,
each checked against an independent computation (scikit-learn, scipy, per-example loops, hand
values), exact under padding and sharding, and in the eval report with its reliability diagram."""
import json

import jax
import numpy as np
import pytest

from focalnet_jax import evaluation
from focalnet_jax.train import calibration
from focalnet_jax.train import eval_step as eval_lib
from focalnet_jax.train import sharding
from test_eval import colour_folder, colour_recogniser  # noqa: F401 - fixtures


def loop_ece(confidence, correct, edges):
  """ECE by walking the examples one at a time into bins (lo, hi] given by `edges`."""
  bins = [[] for _ in range(len(edges) - 1)]
  for c, ok in zip(confidence, correct):
    for m in range(len(edges) - 1):
      if edges[m] < c <= edges[m + 1] or (m == 0 and c == 0):
        bins[m].append((c, ok))
        break
  total = 0.0
  for members in bins:
    if members:
      conf = sum(c for c, _ in members) / len(members)
      acc = sum(ok for _, ok in members) / len(members)
      total += len(members) / len(confidence) * abs(acc - conf)
  return total


def loop_adaptive_ece(confidence, correct, bins):
  """Adaptive ECE: the examples sorted by confidence and cut into `bins` runs by np.array_split."""
  order = sorted(range(len(confidence)), key=lambda i: confidence[i])
  total = 0.0
  for run in np.array_split(np.array(order), bins):
    if len(run):
      total += len(run) / len(order) * abs(np.mean([correct[i] for i in run]) - np.mean([confidence[i] for i in run]))
  return total


def test_ece_on_hand_computed_examples():
  # Two examples in bin (0.8, 0.8667] of 15: mean confidence 0.84, accuracy 1/2 -> gap 0.34;
  # one in (0.2667, 0.3333]: confidence 0.3, right -> gap 0.7. ECE = 2/3 * 0.34 + 1/3 * 0.7.
  conf, correct = np.array([0.82, 0.86, 0.3]), np.array([1.0, 0.0, 1.0])
  assert calibration.ece(conf, correct) == pytest.approx(2 / 3 * 0.34 + 1 / 3 * 0.7)
  # A bin edge belongs to the lower bin: 1/15 and 2/15 fall in different bins.
  assert calibration.equal_width_bins(np.array([1 / 15, 2 / 15, 1.0, 0.0])).tolist() == [0, 1, 14, 0]
  # Perfectly calibrated: confidence 0.75 and 3 of 4 right.
  assert calibration.ece(np.full(4, 0.75), np.array([1, 1, 1, 0.0])) == pytest.approx(0.0)
  # Equal-mass bins with 2 bins: {0.1, 0.2} (acc 1, conf 0.15) and {0.8, 0.9} (acc 0, conf 0.85).
  assert calibration.adaptive_ece(np.array([0.9, 0.1, 0.8, 0.2]), np.array([0, 1, 0, 1.0]), bins=2) == \
      pytest.approx(0.5 * 0.85 + 0.5 * 0.85)


@pytest.mark.parametrize("n", [1, 14, 15, 16, 257])
def test_ece_matches_a_per_example_loop(n):
  rng = np.random.default_rng(n)
  conf = rng.uniform(0.1, 1.0, n)
  correct = (rng.uniform(size=n) < conf ** 2).astype(np.float64)
  edges = [m / 15 for m in range(16)]
  assert calibration.ece(conf, correct) == pytest.approx(loop_ece(conf, correct, edges), abs=1e-12)
  assert calibration.adaptive_ece(conf, correct) == pytest.approx(loop_adaptive_ece(conf, correct, 15), abs=1e-12)
  table = calibration.reliability_table(conf, correct)
  assert sum(r["count"] for r in table) == n and len(table) == 15


def logit_batches(logits, labels, global_batch=16):
  """The logits carried as 1x1 'images' in padded batches: the last batch's padding rows get
  random logits and label 0, which must not count."""
  rng = np.random.default_rng(0)
  n, c = logits.shape
  for s in range(0, n, global_batch):
    real = min(global_batch, n - s)
    image = np.concatenate([logits[s:s + real], rng.normal(0, 5, (global_batch - real, c))]).astype(np.float32)
    yield {"image": image[:, None, None, :], "label": np.pad(labels[s:s + real], (0, global_batch - real)),
           "mask": np.pad(np.ones(real, np.float32), (0, global_batch - real))}


def as_logits(params, images):
  del params
  return images[:, 0, 0, :]


def softmax(x):
  e = np.exp(x - x.max(1, keepdims=True))
  return e / e.sum(1, keepdims=True)


def sharded(step_fn, logits, labels):
  mesh = sharding.make_mesh(-1, 1)
  with jax.set_mesh(mesh):
    return eval_lib.accumulate(jax.jit(step_fn, out_shardings=sharding.replicated(mesh)), {},
                               logit_batches(logits, labels), sharding.batch_sharding(mesh), logits.shape[1])


def test_nll_brier_and_ece_of_sharded_padded_evaluation_match_sklearn():
  sklearn_metrics = pytest.importorskip("sklearn.metrics")
  rng = np.random.default_rng(1)
  n, c = 37, 5  # 3 batches of 16 over 8 devices, 11 padded rows
  logits = rng.normal(0, 2, (n, c)).astype(np.float32)
  labels = rng.integers(0, c, n).astype(np.int32)
  totals, rows = sharded(eval_lib.make_eval_step(as_logits, c), logits, labels)
  result = eval_lib.summarise(totals, rows)
  probs = softmax(logits.astype(np.float64))
  assert result["num_examples"] == n and len(rows["confidence"]) == n
  assert result["nll"] == pytest.approx(sklearn_metrics.log_loss(labels, probs, labels=range(c)), rel=1e-5)
  # Multi-class Brier score: the one-vs-rest binary Brier scores summed over the classes.
  brier = sum(sklearn_metrics.brier_score_loss(labels == k, probs[:, k]) for k in range(c))
  assert result["brier"] == pytest.approx(brier, rel=1e-5)
  assert result["top1"] == pytest.approx(sklearn_metrics.accuracy_score(labels, probs.argmax(1)))
  conf, correct = probs.max(1), (probs.argmax(1) == labels).astype(float)
  assert result["ece"] == pytest.approx(loop_ece(conf, correct, [m / 15 for m in range(16)]), abs=1e-5)
  assert result["adaptive_ece"] == pytest.approx(loop_adaptive_ece(conf, correct, 15), abs=1e-5)


def test_temperature_fit_matches_scipy_and_lowers_the_nll():
  optimize = pytest.importorskip("scipy.optimize")
  rng = np.random.default_rng(2)
  n, c = 45, 4
  labels = rng.integers(0, c, n).astype(np.int32)
  # An overconfident model: right 70% of the time, logits 4x too large.
  hits = rng.uniform(size=n) < 0.7
  pred = np.where(hits, labels, (labels + 1) % c)
  logits = (4.0 * (3.0 * np.eye(c)[pred] + rng.normal(0, 1, (n, c)))).astype(np.float32)
  totals, _ = sharded(eval_lib.make_nll_grid_step(as_logits, c, calibration.INVERSE_TEMPERATURES), logits, labels)
  fit = calibration.fit_temperature(*totals["nll"])

  def nll(t):
    z = logits.astype(np.float64) / t
    z = z - z.max(1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(n), labels]))

  best = optimize.minimize_scalar(nll, bounds=(0.05, 20), method="bounded", options={"xatol": 1e-6}).x
  assert best > 2  # the data is overconfident, the fit must see it
  assert fit["temperature"] == pytest.approx(best, rel=2e-3)
  assert fit["fit_nll_at_1"] == pytest.approx(nll(1.0), rel=1e-5)
  assert fit["fit_nll"] <= fit["fit_nll_at_1"]
  scaled = eval_lib.summarise(*sharded(eval_lib.make_eval_step(as_logits, c, temperature=fit["temperature"]),
                                       logits, labels))
  assert scaled["nll"] == pytest.approx(nll(fit["temperature"]), rel=1e-5)


def test_temperature_fit_refuses_a_minimum_at_the_end_of_the_grid():
  betas = np.array([0.5, 1.0, 2.0])
  with pytest.raises(ValueError, match="end of the grid"):
    calibration.fit_temperature(np.array([3.0, 2.0, 1.0]), 1.0, betas)


def test_report_carries_calibration_temperature_scaling_and_a_reliability_plot(tmp_path, colour_folder):  # noqa: F811
  pytest.importorskip("tensorflow")  # folders are read by the tf.data pipeline
  pytest.importorskip("matplotlib")
  ckpt, config = colour_recogniser(tmp_path)
  config.update(dataset=f"folder:{colour_folder}", train_split="val", eval_split="val")
  png = tmp_path / "reliability.png"
  report = evaluation.evaluate_checkpoint(str(ckpt), config, calibrate_on="val", reliability_plot=str(png))
  for key in ("ece", "adaptive_ece", "nll", "brier"):
    assert 0 <= report[key] < float("inf")
  assert report["nll"] == report["loss"]
  assert sum(r["count"] for r in report["reliability"]) == 7
  ts = report["temperature_scaled"]
  assert ts["fitted_on"] == "val" and ts["temperature"] > 0
  assert ts["nll"] <= report["nll"] + 1e-6  # fitted on the evaluated split itself: cannot be worse
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
  with open(report["output"]) as f:
    saved = json.load(f)
  assert saved["ece"] == report["ece"] and saved["temperature_scaled"]["temperature"] == ts["temperature"]
