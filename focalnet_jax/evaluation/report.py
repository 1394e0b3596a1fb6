"""A checkpoint, evaluated on a dataset split: the model and its eval preprocessing as
`focalnet_jax.from_pretrained` reads them, exact sharded metrics (`focalnet_jax.train.eval_step`),
and a JSON report beside the checkpoint.

Label spaces (see `focalnet_jax.data.labels`): ImageNet-A and -R are scored with the logits
restricted to their 200 classes; ImageNet-ReaL adds `real_top1`.
"""
from __future__ import annotations

import functools
import os
import time
from typing import Any, Mapping, NamedTuple

import jax
import ml_collections
import numpy as np

from focalnet_jax import atomic
from focalnet_jax.data import labels
from focalnet_jax.train import eval_step as eval_lib
from focalnet_jax.train import config_check, sharding
from focalnet_jax.weights import Pretrained, PretrainedInfo, from_pretrained

# The data settings (beyond the preprocessing) a training run's config carries over to its evaluation.
DATA_SETTINGS = ("dataset", "data_dir", "train_split", "eval_split", "eval_batch_size", "digits_split_seed")


def as_pretrained(checkpoint_or_path: Pretrained | str, *, step: int | None = None, ema: bool = False,
                  dtype: str | None = None) -> Pretrained:
  """`checkpoint_or_path` as it is when already loaded, else `from_pretrained(path, step, ema, dtype)`."""
  if isinstance(checkpoint_or_path, Pretrained):
    return checkpoint_or_path
  return from_pretrained(checkpoint_or_path, step=step, ema=ema, **({"dtype": dtype} if dtype else {}))


def num_classes_of(params: Any) -> int:
  head = params.get("head") if isinstance(params, dict) else None
  if head is None:
    raise ValueError("The checkpoint's model has no classification head (num_classes=0).")
  return int(np.shape(head["kernel"])[-1])


def eval_config(base: ml_collections.ConfigDict, info: PretrainedInfo) -> ml_collections.ConfigDict:
  """`base` (e.g. configs/default.py) with the weights' eval preprocessing (`info`: the training
  run's, the published weights', else the official recipe's at the variant's resolution) and the
  data settings of the run that wrote the checkpoint, if one did."""
  config = base.copy_and_resolve_references()
  trained = info.meta.get("config") or {}
  for key in DATA_SETTINGS:
    if trained.get(key) is not None:
      config[key] = trained[key]
  config.image_size, config.crop_ratio, config.interpolation = info.image_size, info.crop_ratio, info.interpolation
  config.aug.mean, config.aug.std = info.mean, info.std
  return config


def _label_folder_by_model(config: ml_collections.ConfigDict, meta: Mapping[str, Any],
                           num_classes: int) -> ml_collections.ConfigDict:
  """An image folder is labelled in the model's label space (its class names: the training data's,
  or ImageNet-1K's wnids for a 1000-class head), so evaluating it neither lists nor needs a train
  split; a model without class names labels the evaluated split by its own class directories."""
  if not config.dataset.startswith("folder:"):
    return config
  config = config.copy_and_resolve_references()
  names = meta.get("class_names")
  if num_classes == labels.IMAGENET1K_CLASSES and not (names and len(names) == num_classes
                                                       and _folder_classes(config) <= set(names)):
    # Published 1000-class weights name their classes 'tench', ...: an ImageNet folder sorted by
    # wnid ('n01440764', ...) is in the same order, which every ImageNet-1K model uses.
    names = labels.imagenet1k_wnids()
  if names and len(names) == num_classes:
    config.class_names, config.train_split = tuple(names), ""
  else:
    config.train_split = config.eval_split
  return config


def _folder_classes(config: ml_collections.ConfigDict) -> set[str]:
  """The visible class directories of an image folder's eval split (empty if it has none)."""
  split = os.path.join(config.dataset[len("folder:"):], config.eval_split)
  if not os.path.isdir(split):
    return set()
  return {d for d in os.listdir(split) if not d.startswith(".") and os.path.isdir(os.path.join(split, d))}


def default_report_path(loaded: Pretrained, config, ema: bool) -> str:
  """Where a report goes unless told otherwise: beside the checkpoint, named by split, step and EMA."""
  name = config.dataset.replace("/", "_").replace(":", "_")
  return os.path.join(loaded.info.directory,
                      f"eval_{name}_{config.eval_split}_step{loaded.info.step}{'_ema' if ema else ''}.json")


class EvalSetup(NamedTuple):
  """What every pass over a split of the evaluated data needs: the checked config, its dataset,
  the label space, the device mesh and the replicated params."""

  config: ml_collections.ConfigDict
  dataset: Any
  num_classes: int
  subset: np.ndarray | None
  mesh: jax.sharding.Mesh
  params: Any


def eval_setup(loaded: Pretrained, config: ml_collections.ConfigDict) -> EvalSetup:
  """Checks that `loaded` can be evaluated on `config.dataset` (image size, label space, batch
  size) and places its params on every device."""
  from focalnet_jax import data as data_lib  # noqa: PLC0415

  loaded.model.check_image_size(config.image_size, config.image_size)
  n_model = num_classes_of(loaded.params)
  config = _label_folder_by_model(config, loaded.info.meta, n_model)
  dataset = data_lib.from_config(config)
  info = dataset.info(config)
  if info.num_classes != n_model:
    raise ValueError(
        f"The checkpoint's head has {n_model} classes but {config.dataset!r} has {info.num_classes}. "
        "Evaluate on data with the same label space (or fine-tune first with train.py --config.init_from)."
    )
  mesh = sharding.make_mesh(-1, 1)
  if config.eval_batch_size % mesh.devices.size:
    raise ValueError(f"eval_batch_size={config.eval_batch_size} must be divisible by the {mesh.devices.size} devices.")
  params = jax.device_put(loaded.params, sharding.replicated(mesh))
  return EvalSetup(config, dataset, n_model, labels.subset_indices(config.dataset), mesh, params)


@functools.lru_cache(maxsize=8)
def _jitted(step_fn, mesh: jax.sharding.Mesh):
  """One jit per step function: a suite of datasets in one label space compiles its step once."""
  return jax.jit(step_fn, out_shardings=sharding.replicated(mesh))


def run_pass(setup: EvalSetup, step_fn, split: str):
  """One sharded pass of the jitted `step_fn` over `split`: (summed pairs, per-example rows)."""
  config = setup.config.copy_and_resolve_references()
  config.eval_split = split
  num = setup.dataset.info(config).num_eval
  step = _jitted(step_fn, setup.mesh)
  with jax.set_mesh(setup.mesh):
    batches = setup.dataset.eval_batches(config, process_index=jax.process_index(), process_count=jax.process_count())
    return eval_lib.accumulate(step, setup.params, batches, sharding.batch_sharding(setup.mesh), setup.num_classes,
                               num_batches=-(-num // config.eval_batch_size))


def calibrated_metrics(setup: EvalSetup, logits_fn, split: str) -> dict[str, Any]:
  """Temperature scaling fitted on `split`, and the eval split's calibration at that temperature."""
  from focalnet_jax.train import calibration  # noqa: PLC0415

  grid_step = eval_lib.make_nll_grid_step(logits_fn, setup.num_classes, calibration.INVERSE_TEMPERATURES,
                                          setup.subset)
  totals, _ = run_pass(setup, grid_step, split)
  fit = calibration.fit_temperature(*totals["nll"])
  scaled = eval_lib.make_eval_step(logits_fn, setup.num_classes, setup.subset, temperature=fit["temperature"])
  after = eval_lib.summarise(*run_pass(setup, scaled, setup.config.eval_split))
  return {"fitted_on": split, **fit, **{k: after[k] for k in ("nll", "brier", "ece", "adaptive_ece")}}


def evaluate_checkpoint(checkpoint_or_path: Pretrained | str, config: ml_collections.ConfigDict, *,
                        step: int | None = None, ema: bool = False, dtype: str | None = None,
                        output: str | None = None, write: bool = True, calibrate_on: str | None = None,
                        reliability_plot: str | None = None) -> dict[str, Any]:
  """Evaluates a checkpoint (a path, or one opened by `focalnet_jax.from_pretrained`) on `config.dataset` /
  `config.eval_split` and returns the report, calibration included (`calibration`); with
  `calibrate_on` (a split), also temperature scaling fitted there and the calibration after it
  (`temperature_scaled`); with `reliability_plot` (a path) the reliability diagram as a PNG. With
  `write` (process 0) the report is also written as JSON (`output`, default beside the checkpoint)."""
  from focalnet_jax.train import calibration  # noqa: PLC0415

  loaded = as_pretrained(checkpoint_or_path, step=step, ema=ema, dtype=dtype)
  setup = eval_setup(loaded, config)
  config, subset = setup.config, setup.subset
  logits_fn = eval_lib.model_logits_fn(loaded.model, config_check.execution_of(config).chunk_elements)
  t0 = time.time()
  totals, rows = run_pass(setup, eval_lib.make_eval_step(logits_fn, setup.num_classes, subset), config.eval_split)
  result = eval_lib.summarise(totals, rows)
  elapsed = time.time() - t0
  report = {
      "checkpoint": loaded.info.directory, "step": int(loaded.info.step), "ema": ema, "model": loaded.info.variant,
      "dataset": config.dataset, "split": config.eval_split, "image_size": config.image_size,
      "crop_ratio": config.crop_ratio, "interpolation": config.interpolation,
      **result, "images_per_s": result["num_examples"] / max(elapsed, 1e-9), "seconds": elapsed,
      "reliability": calibration.reliability_table(rows["confidence"], rows["correct"]),
  }
  # 'top5' is top-k with k = min(5, classes): with fewer classes it is labelled by its real k.
  report["top_k"] = eval_lib.top_k_of(setup.num_classes if subset is None else len(subset))
  if subset is not None:
    report["class_subset"] = f"{len(subset)} classes of {config.dataset}"
  if calibrate_on:
    report["temperature_scaled"] = calibrated_metrics(setup, logits_fn, calibrate_on)
  if reliability_plot and jax.process_index() == 0:
    report["reliability_plot"] = calibration.plot_reliability(
        report["reliability"], reliability_plot,
        f"{loaded.info.variant} on {config.dataset}:{config.eval_split} (ECE {result['ece']:.2%})")
  if write and jax.process_index() == 0:
    report["output"] = write_report(report, output or default_report_path(loaded, config, ema))
  return report


def write_report(report: dict[str, Any], output: str) -> str:
  """Writes `report` as JSON to `output` (atomically, its directory created); returns the path."""
  atomic.write_json(output, report)
  return output
