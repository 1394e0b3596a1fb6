"""Exact evaluation metrics: one jitted step per batch, (sum, count) pairs divided on the host.

Calibration (`focalnet_jax.train.calibration`): each step also returns every example's
confidence (top-1 probability) and correctness, gathered to the host with padded rows dropped,
so the binned ECEs are exact too; NLL is the mean loss and the Brier score a (sum, count) pair.
Padded examples (mask 0) never count and every example counts once however the split is sharded
over devices and hosts. Label spaces (see `focalnet_jax.data.labels`): ImageNet-A and -R are
labelled in the 1K space and scored with the logits restricted to their 200 classes; ImageNet-ReaL
batches carry a multi-hot 'real' vector and add `real_top1` (the fraction of images with at least
one ReaL label whose top-1 prediction is one of them).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from focalnet_jax.data.info import check_labels
from focalnet_jax.kernels import chunking
from focalnet_jax.progress import Progress
from focalnet_jax.train import runlog, sharding

LogitsFn = Callable[[Any, jax.Array], jax.Array]  # (params, images) -> logits


def model_logits_fn(model, chunk_elements: int | str = "auto") -> LogitsFn:
  """(params, images) -> inference logits, each stage over batch chunks of `chunk_elements`
  activation elements ('auto': cache-sized on CPU, whole batches on accelerators)."""
  return lambda params, images: chunking.apply(model, {"params": params}, images, chunk_elements=chunk_elements)


def top_k_of(num_classes: int) -> int:
  """The k of the 'top5' metric: 5, or the class count when there are fewer classes."""
  return min(5, num_classes)


def _restrict(num_classes: int, class_subset: Sequence[int] | None):
  """float32 logits -> the same with every class outside `class_subset` at -inf."""
  if class_subset is None:
    return lambda logits: logits
  allowed = np.zeros((num_classes,), bool)
  allowed[np.asarray(class_subset)] = True
  return lambda logits: jnp.where(allowed, logits, -jnp.inf)


def make_eval_step(logits_fn: LogitsFn, num_classes: int, class_subset: Sequence[int] | None = None,
                   temperature: float = 1.0):
  """(params, batch) -> {'loss', 'top1', 'top5', 'brier'[, 'real_top1']} as (sum, count) pairs, and
  'examples': each row's top-1 'confidence', 'correct' and 'mask' (for the binned calibration errors).

  With `class_subset` the logits of every other class are excluded (labels stay in the full
  label space), as for ImageNet-A/R with a 1K model. The logits are divided by `temperature`
  (temperature scaling, Guo et al. 2017; 1 leaves them as they are).
  """
  k = top_k_of(num_classes if class_subset is None else len(class_subset))
  restrict = _restrict(num_classes, class_subset)

  def eval_fn(params, batch):
    raw = logits_fn(params, batch["image"]).astype(jnp.float32)
    nonfinite = ~jnp.all(jnp.isfinite(raw), axis=-1)  # before the subset's -inf
    logits = restrict(raw) / temperature
    labels_, mask = batch["label"], batch["mask"]
    log_probs = jax.nn.log_softmax(logits)
    loss = -jnp.take_along_axis(log_probs, labels_[:, None], axis=-1)[:, 0]
    pred = jnp.argmax(logits, -1)
    top1 = (pred == labels_).astype(jnp.float32)
    topk = jnp.any(jax.lax.top_k(logits, k)[1] == labels_[:, None], axis=-1).astype(jnp.float32)
    probs = jnp.exp(log_probs)
    # Multi-class Brier score (Brier 1950): squared distance of the probabilities to the one-hot label.
    brier = jnp.sum(jnp.square(probs - jax.nn.one_hot(labels_, logits.shape[-1])), axis=-1)
    count = jnp.sum(mask)
    real_rows = mask > 0
    # `where`, not a product: a padded row's loss may be inf (its dummy label can be excluded).
    total = lambda v: jnp.sum(jnp.where(real_rows, v, 0.0))  # noqa: E731
    out = {"loss": (total(loss), count), "top1": (total(top1), count), "top5": (total(topk), count),
           "brier": (total(brier), count), "nonfinite": (total(nonfinite), count),
           "examples": {"confidence": jnp.max(probs, -1), "correct": top1, "mask": mask}}
    if "real" in batch:
      real = batch["real"]
      has_real = mask * (jnp.sum(real, -1) > 0)
      hit = jnp.take_along_axis(real, pred[:, None], axis=-1)[:, 0]
      out["real_top1"] = (jnp.sum(hit * has_real), jnp.sum(has_real))
    return out

  return eval_fn


def make_nll_grid_step(logits_fn: LogitsFn, num_classes: int, inverse_temperatures: Sequence[float],
                       class_subset: Sequence[int] | None = None):
  """(params, batch) -> {'nll': (per-temperature NLL sums, count)}: the mean NLL of the logits
  times each inverse temperature, to fit temperature scaling on a whole split in one pass."""
  restrict = _restrict(num_classes, class_subset)
  betas = jnp.asarray(inverse_temperatures, jnp.float32)

  def nll_fn(params, batch):
    logits = restrict(logits_fn(params, batch["image"]).astype(jnp.float32))
    labels_, mask = batch["label"], batch["mask"]
    scaled = betas[:, None, None] * logits[None]  # (temperatures, batch, classes)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(scaled), labels_[None, :, None], axis=-1)[..., 0]
    return {"nll": (jnp.sum(jnp.where(mask[None] > 0, nll, 0.0), axis=1), jnp.sum(mask))}

  return nll_fn


def accumulate(eval_step, params, batches: Iterable[dict[str, np.ndarray]],
               batch_sharding: jax.sharding.NamedSharding, num_classes: int, num_batches: int | None = None):
  """One pass over `batches` (this process's share): the summed (sum, count) pairs and, if the step
  returns 'examples', every real row's per-example values (all processes' rows, on the host). Every
  label is checked in [0, num_classes)."""
  totals, examples = None, []
  progress = Progress("Evaluating", num_batches) if num_batches else None
  for n, batch in enumerate(batches, 1):
    check_labels(batch["label"], num_classes, f"eval batch {n}")
    out = dict(eval_step(params, sharding.to_global(batch, batch_sharding)))
    if "examples" in out:
      examples.append(out.pop("examples"))  # device arrays: fetched once at the end
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
    if progress is not None and n < num_batches:  # the last batch ends the pass: nothing left to report
      progress.update(n)
  if totals is None:
    raise ValueError("The eval split yielded no batches.")
  totals = jax.device_get(totals)
  rows = {}
  if examples:
    fetched = jax.device_get(examples)
    keep = np.concatenate([np.asarray(e["mask"]) for e in fetched]) > 0
    rows = {key: np.concatenate([np.asarray(e[key]) for e in fetched])[keep]
            for key in fetched[0] if key != "mask"}
  return totals, rows


def summarise(totals, rows: dict[str, np.ndarray]) -> dict[str, float]:
  """Averages, `num_examples`, `nll` (the unsmoothed mean loss) and, with per-example rows, the
  expected calibration errors (15 equal-width bins, and 15 equal-mass bins)."""
  from focalnet_jax.train import calibration  # noqa: PLC0415

  totals = dict(totals)
  bad, count = (int(v) for v in totals.pop("nonfinite", (0, 0)))
  if bad:  # argmax over NaN logits picks the first classes: a top-1 that would look like a number
    raise FloatingPointError(
        f"{bad} of {count} images gave non-finite logits (NaN or inf), so no accuracy or loss is reported. "
        "The weights or the inputs hold NaN/inf, or the compute dtype overflowed: check the checkpoint, "
        "or evaluate in float32 (--dtype float32 / --config.model.dtype=float32).")
  result = runlog.average(totals)
  result["num_examples"] = float(totals["top1"][1])
  result["nll"] = result["loss"]
  if rows:
    result["ece"] = calibration.ece(rows["confidence"], rows["correct"])
    result["adaptive_ece"] = calibration.adaptive_ece(rows["confidence"], rows["correct"])
  return result


def evaluate(eval_step, params, batches: Iterable[dict[str, np.ndarray]],
             batch_sharding: jax.sharding.NamedSharding, num_classes: int,
             num_batches: int | None = None) -> dict[str, float]:
  """One pass over `batches` (this process's share): averages, `num_examples` and calibration
  (see `summarise`); every label checked in [0, num_classes). With `num_batches` (the pass's
  length), a long pass logs its progress with an ETA."""
  return summarise(*accumulate(eval_step, params, batches, batch_sharding, num_classes, num_batches))
