"""Calibration: how far a classifier's confidence is from its accuracy, and temperature scaling.

Expected calibration error (Guo et al. 2017, "On Calibration of Modern Neural Networks"): the
examples are binned by their confidence (top-1 probability) into M = 15 bins; ECE is the mean
over examples of |accuracy(bin) - confidence(bin)|, i.e. sum_m |B_m|/n |acc(B_m) - conf(B_m)|.
`ece` uses Guo's equal-width bins ((m-1)/M, m/M]; `adaptive_ece` equal-mass bins (each holds
n/M examples, consecutive in confidence; Nguyen & O'Connor 2015, Nixon et al. 2019), which an
overconfident model's pile-up near 1 does not hide. NLL and the Brier score are computed on the
device with the other metrics (`focalnet_jax.train.eval_step`).

Temperature scaling (Guo et al. 2017, section 4.2) divides every logit by one T > 0 fitted to
minimise the NLL on a held-out split; top-1 is unchanged. The NLL is summed on the device for a
grid of inverse temperatures in one pass over the split (exact under sharding and padding), and
the minimum is refined by a parabola through the three grid points around it (the NLL is convex
in 1/T: a log-sum-exp of functions linear in it).
"""
from __future__ import annotations

from typing import Any

import numpy as np

ECE_BINS = 15  # Guo et al. 2017
# Inverse temperatures tried when fitting: T from 1/20 to 20, 5.1% apart (1 among them).
INVERSE_TEMPERATURES = tuple(np.geomspace(1 / 20, 20, 121).tolist())


def _gaps(bin_of: np.ndarray, confidence: np.ndarray, correct: np.ndarray, bins: int) -> float:
  conf = np.bincount(bin_of, weights=confidence, minlength=bins)
  acc = np.bincount(bin_of, weights=correct, minlength=bins)
  return float(np.sum(np.abs(acc - conf)) / max(len(confidence), 1))  # sum_m |n_m acc_m - n_m conf_m| / n


def equal_width_bins(confidence: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
  """Each example's bin: ((m-1)/M, m/M] -> m - 1 (confidence 0 goes to the first bin)."""
  return np.clip(np.ceil(np.asarray(confidence, np.float64) * bins).astype(np.int64) - 1, 0, bins - 1)


def equal_mass_bins(confidence: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
  """Each example's bin when the examples, sorted by confidence, are cut into `bins` runs of
  (almost) equal length (np.array_split's sizes: the first n % bins runs one longer)."""
  n = len(confidence)
  sizes = np.full(bins, n // bins) + (np.arange(bins) < n % bins)
  bin_of = np.empty(n, np.int64)
  bin_of[np.argsort(confidence, kind="stable")] = np.repeat(np.arange(bins), sizes)
  return bin_of


def ece(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
  """Expected calibration error with equal-width confidence bins (Guo et al. 2017)."""
  return _gaps(equal_width_bins(confidence, bins), np.asarray(confidence, np.float64),
               np.asarray(correct, np.float64), bins)


def adaptive_ece(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
  """Expected calibration error with equal-mass bins (each bin holds ~n/bins examples)."""
  return _gaps(equal_mass_bins(confidence, bins), np.asarray(confidence, np.float64),
               np.asarray(correct, np.float64), bins)


def reliability_table(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, float]]:
  """Per equal-width bin: its range, example count, mean confidence and accuracy (None if empty)."""
  bin_of = equal_width_bins(confidence, bins)
  counts = np.bincount(bin_of, minlength=bins)
  conf = np.bincount(bin_of, weights=confidence, minlength=bins)
  acc = np.bincount(bin_of, weights=correct, minlength=bins)
  return [{"lo": m / bins, "hi": (m + 1) / bins, "count": int(counts[m]),
           "confidence": float(conf[m] / counts[m]) if counts[m] else None,
           "accuracy": float(acc[m] / counts[m]) if counts[m] else None} for m in range(bins)]


def fit_temperature(nll_sums: np.ndarray, count: float, inverse_temperatures=INVERSE_TEMPERATURES) -> dict[str, float]:
  """The temperature minimising the mean NLL, from its values at `inverse_temperatures` (summed over
  `count` examples): the grid's best point refined by the vertex of the parabola through it and its
  neighbours. Returns the temperature and the mean NLL at T=1 and at the grid's best point."""
  betas = np.asarray(inverse_temperatures, np.float64)
  nll = np.asarray(nll_sums, np.float64) / max(float(count), 1e-12)
  if not np.all(np.isfinite(nll)):
    raise ValueError("The NLL is not finite at some temperature: the calibration split has an example "
                     "whose label gets probability 0 (check its label space).")
  i = int(np.argmin(nll))
  if i in (0, len(betas) - 1):
    raise ValueError(f"The best temperature {1 / betas[i]:.3g} lies at the end of the grid "
                     f"[{1 / betas[-1]:.3g}, {1 / betas[0]:.3g}]: the model's logits are far off scale.")
  (x0, x1, x2), (y0, y1, y2) = betas[i - 1:i + 2], nll[i - 1:i + 2]
  # Vertex of the parabola through three points (x0 < x1 < x2, y1 the smallest: it lies in [x0, x2]).
  num = (x1 - x0) ** 2 * (y1 - y2) - (x1 - x2) ** 2 * (y1 - y0)
  den = (x1 - x0) * (y1 - y2) - (x1 - x2) * (y1 - y0)
  beta = x1 - 0.5 * num / den if den != 0 else x1
  one = int(np.argmin(np.abs(np.log(betas))))
  return {"temperature": float(1.0 / beta), "fit_nll_at_1": float(nll[one]), "fit_nll": float(nll[i])}


def plot_reliability(table: list[dict[str, Any]], path: str, title: str = "") -> str:
  """Writes the reliability diagram of `reliability_table` rows as a PNG: accuracy per confidence
  bin against the diagonal of perfect calibration, with the share of examples in each bin."""
  import matplotlib  # noqa: PLC0415 (optional: only for the plot)

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  lo = np.array([r["lo"] for r in table])
  width = table[0]["hi"] - table[0]["lo"]
  acc = np.array([r["accuracy"] or 0.0 for r in table])
  share = np.array([r["count"] for r in table], np.float64)
  share /= max(share.sum(), 1.0)
  fig, (top, bottom) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
  top.bar(lo, acc, width=width, align="edge", edgecolor="black", label="accuracy")
  top.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
  top.set_ylabel("accuracy")
  top.set_ylim(0, 1)
  top.legend(loc="upper left")
  top.set_title(title)
  bottom.bar(lo, share, width=width, align="edge", edgecolor="black", color="tab:orange")
  bottom.set_xlabel("confidence (top-1 probability)")
  bottom.set_ylabel("share of examples")
  bottom.set_xlim(0, 1)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
