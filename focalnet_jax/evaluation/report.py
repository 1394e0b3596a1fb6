"""Evaluation: exact, sharded metrics over a split, and top-k predictions for single images.

Metrics travel as (sum, count) pairs and are divided on the host, so padded examples (mask 0)
never count and every example counts once however the split is sharded over devices and hosts.

Label spaces (see `focalnet_jax.labels`): ImageNet-A and -R are labelled in the 1K space and
scored with the logits restricted to their 200 classes; ImageNet-ReaL batches carry a multi-hot
'real' vector and add `real_top1` (the fraction of images with at least one ReaL label whose
top-1 prediction is one of them).
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from focalnet_jax import checkpoint
from focalnet_jax.data import labels
from focalnet_jax.model import variants
from focalnet_jax.train import runlog, sharding

LogitsFn = Callable[[Any, jax.Array], jax.Array]  # (params, images) -> logits


def model_logits_fn(model) -> LogitsFn:
  return lambda params, images: model.apply({"params": params}, images, train=False)


def make_eval_step(logits_fn: LogitsFn, num_classes: int, class_subset: Sequence[int] | None = None):
  """(params, batch) -> {'loss', 'top1', 'top5'[, 'real_top1']} as (sum, count) pairs.

  With `class_subset` the logits of every other class are excluded (labels stay in the full
  label space), as for ImageNet-A/R with a 1K model.
  """
  k = min(5, num_classes if class_subset is None else len(class_subset))
  allowed = None
  if class_subset is not None:
    allowed = np.zeros((num_classes,), bool)
    allowed[np.asarray(class_subset)] = True

  def eval_fn(params, batch):
    logits = logits_fn(params, batch["image"]).astype(jnp.float32)
    if allowed is not None:
      logits = jnp.where(allowed, logits, -jnp.inf)
    labels_, mask = batch["label"], batch["mask"]
    log_probs = jax.nn.log_softmax(logits)
    loss = -jnp.take_along_axis(log_probs, labels_[:, None], axis=-1)[:, 0]
    pred = jnp.argmax(logits, -1)
    top1 = (pred == labels_).astype(jnp.float32)
    topk = jnp.any(jax.lax.top_k(logits, k)[1] == labels_[:, None], axis=-1).astype(jnp.float32)
    count = jnp.sum(mask)
    real_rows = mask > 0
    # `where`, not a product: a padded row's loss may be inf (its dummy label can be excluded).
    total = lambda v: jnp.sum(jnp.where(real_rows, v, 0.0))
    out = {"loss": (total(loss), count), "top1": (total(top1), count), "top5": (total(topk), count)}
    if "real" in batch:
      real = batch["real"]
      has_real = mask * (jnp.sum(real, -1) > 0)
      hit = jnp.take_along_axis(real, pred[:, None], axis=-1)[:, 0]
      out["real_top1"] = (jnp.sum(hit * has_real), jnp.sum(has_real))
    return out

  return eval_fn


def evaluate(eval_step, params, batches: Iterable[dict[str, np.ndarray]],
             batch_sharding: jax.sharding.NamedSharding) -> dict[str, float]:
  """One pass over `batches` (this process's share): averages and `num_examples`."""
  totals = None
  for batch in batches:
    out = eval_step(params, sharding.to_global(batch, batch_sharding))
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  if totals is None:
    raise ValueError("The eval split yielded no batches.")
  totals = jax.device_get(totals)
  result = runlog.average(totals)
  result["num_examples"] = float(totals["top1"][1])
  return result


# --- checkpoints -------------------------------------------------------------------------


def checkpoint_dir(path: str) -> str:
  """A training workdir (holding checkpoints/) or a checkpoint directory -> the latter."""
  path = os.path.abspath(os.path.expanduser(path))
  nested = os.path.join(path, "checkpoints")
  return nested if os.path.isdir(nested) else path


def load_model(path: str, *, step: int | None = None, ema: bool = False, dtype: str | None = None):
  """(model, params, meta, step) of a checkpoint written by train.py or by the converter."""
  ckpt = checkpoint_dir(path)
  meta = checkpoint.read_meta(ckpt, step)
  if "model" not in meta:
    raise ValueError(f"Checkpoint {ckpt!r} has no 'model' in its metadata; it was not written by "
                     "focalnet_jax (train.py or python -m focalnet_jax.convert).")
  overrides = dict(meta.get("model_overrides", {}))
  if dtype:
    overrides["dtype"] = dtype
  model = variants.create_model(meta["model"], **overrides)
  params, _ = checkpoint.load_params(ckpt, step=step, ema=ema)
  steps = checkpoint.manager(ckpt).all_steps()
  return model, params, meta, (step if step is not None else max(steps))


def num_classes_of(params: Any) -> int:
  head = params.get("head") if isinstance(params, dict) else None
  if head is None:
    raise ValueError("The checkpoint's model has no classification head (num_classes=0).")
  return int(np.shape(head["kernel"])[-1])


def class_names_for(meta: dict[str, Any], num_classes: int) -> tuple[str, ...]:
  """The checkpoint's class names: the training data's, else ImageNet's, else class_<i>."""
  names = meta.get("class_names")
  if names and len(names) == num_classes:
    return tuple(names)
  return labels.imagenet_class_names(num_classes) or tuple(f"class_{i}" for i in range(num_classes))


def settings_from_checkpoint(base: ml_collections.ConfigDict, meta: dict[str, Any]) -> ml_collections.ConfigDict:
  """`base` (e.g. configs/default.py) with the data settings of the run that wrote the checkpoint,
  or, for a converted checkpoint, the variant's own resolution."""
  config = base.copy_and_resolve_references()
  trained = meta.get("config")
  if trained:
    for key in ("dataset", "data_dir", "train_split", "eval_split", "image_size", "crop_ratio",
                "interpolation", "eval_batch_size", "digits_split_seed"):
      if trained.get(key) is not None:
        config[key] = trained[key]
    if "aug" in trained:
      config.aug.mean, config.aug.std = tuple(trained["aug"]["mean"]), tuple(trained["aug"]["std"])
  else:
    config.image_size = variants.default_image_size(meta["model"])
  return config


def evaluate_checkpoint(path: str, config: ml_collections.ConfigDict, *,
                        step: int | None = None, ema: bool = False, dtype: str | None = None,
                        output: str | None = None) -> dict[str, Any]:
  """Evaluates a checkpoint on `config.dataset` / `config.eval_split`; writes and returns a report."""
  from focalnet_jax import data as data_lib  # noqa: PLC0415

  model, params, meta, step = load_model(path, step=step, ema=ema, dtype=dtype)
  model.check_image_size(config.image_size, config.image_size)
  n_model = num_classes_of(params)
  info = data_lib.get_info(config)
  subset = labels.subset_indices(config.dataset)
  if info.num_classes != n_model:
    raise ValueError(
        f"The checkpoint's head has {n_model} classes but {config.dataset!r} has {info.num_classes}. "
        "Evaluate on data with the same label space (or fine-tune first with train.py --config.init_from)."
    )
  mesh = sharding.make_mesh(-1, 1)
  n_dev = mesh.devices.size
  if config.eval_batch_size % n_dev:
    raise ValueError(f"eval_batch_size={config.eval_batch_size} must be divisible by the {n_dev} devices.")
  batch_sh = sharding.batch_sharding(mesh)
  params = jax.device_put(params, sharding.replicated(mesh))
  step_fn = jax.jit(make_eval_step(model_logits_fn(model), n_model, subset), out_shardings=sharding.replicated(mesh))
  t0 = time.time()
  with jax.set_mesh(mesh):
    result = evaluate(step_fn, params, data_lib.eval_iterator(
        config, process_index=jax.process_index(), process_count=jax.process_count()), batch_sh)
  elapsed = time.time() - t0
  report = {
      "checkpoint": checkpoint_dir(path), "step": int(step), "ema": ema, "model": meta["model"],
      "dataset": config.dataset, "split": config.eval_split, "image_size": config.image_size,
      "crop_ratio": config.crop_ratio, "interpolation": config.interpolation,
      **result, "images_per_s": result["num_examples"] / max(elapsed, 1e-9), "seconds": elapsed,
  }
  if subset is not None:
    report["class_subset"] = f"{len(subset)} classes of {config.dataset}"
  if jax.process_index() == 0:
    output = output or os.path.join(
        checkpoint_dir(path),
        f"eval_{config.dataset.replace('/', '_').replace(':', '_')}_{config.eval_split}_step{step}"
        f"{'_ema' if ema else ''}.json")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
      json.dump(report, f, indent=2)
    report["output"] = output
  return report


# --- single images -------------------------------------------------------------------------


def preprocess_files(paths: Sequence[str], config: ml_collections.ConfigDict) -> np.ndarray:
  """The eval transform of the input pipeline (resize, centre crop, normalise) on image files."""
  from focalnet_jax.data import augment  # noqa: PLC0415 - imports TensorFlow
  from focalnet_jax.data.pipeline import import_tf  # noqa: PLC0415

  tf = import_tf()
  out = []
  for p in paths:
    try:
      data = tf.io.read_file(p)
      img = augment.eval_transform(data, config.image_size, config.crop_ratio, config.interpolation)
    except (tf.errors.OpError, ValueError) as e:
      raise ValueError(f"Cannot read image {p!r}: {type(e).__name__}: {str(e).splitlines()[0]}") from e
    out.append(np.asarray(augment.normalize(img, config.aug.mean, config.aug.std)))
  return np.stack(out)


def top_k(logits: np.ndarray, class_names: Sequence[str], k: int = 5) -> list[list[tuple[str, float]]]:
  """Per row: the k most probable (class name, probability), most probable first."""
  probs = np.asarray(jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1))
  order = np.argsort(-probs, axis=-1)[:, :k]
  return [[(class_names[i], float(row[i])) for i in idx] for row, idx in zip(probs, order)]


def predict_files(path: str, image_paths: Sequence[str], config: ml_collections.ConfigDict, *,
                  ema: bool = False, k: int = 5) -> list[list[tuple[str, float]]]:
  """Top-k (class, probability) for each image file, from a checkpoint; `config` gives the eval
  transform (image_size, crop_ratio, interpolation, mean/std)."""
  for p in image_paths:
    if not os.path.isfile(p):
      raise FileNotFoundError(f"No image file at {p!r}.")
  model, params, meta, _ = load_model(path, ema=ema)
  n = num_classes_of(params)
  images = preprocess_files(image_paths, config)
  logits = jax.jit(model_logits_fn(model))(params, jnp.asarray(images))
  return top_k(np.asarray(logits), class_names_for(meta, n), k)
