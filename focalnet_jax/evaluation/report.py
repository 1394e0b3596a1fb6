"""A checkpoint, evaluated on a dataset split: the model rebuilt from its metadata, exact sharded
metrics (`focalnet_jax.train.eval_step`), and a JSON report beside the checkpoint.

Label spaces (see `focalnet_jax.data.labels`): ImageNet-A and -R are scored with the logits
restricted to their 200 classes; ImageNet-ReaL adds `real_top1`.
"""
from __future__ import annotations

import os
import time
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np

from focalnet_jax import atomic, checkpoint, pretrained
from focalnet_jax.data import labels
from focalnet_jax.model import FocalNet, variants
from focalnet_jax.train import eval_step as eval_lib
from focalnet_jax.train import sharding

# The data settings a training run's config carries over to its evaluation.
DATA_SETTINGS = ("dataset", "data_dir", "train_split", "eval_split", "image_size", "crop_ratio",
                 "interpolation", "eval_batch_size", "digits_split_seed")


class LoadedModel(NamedTuple):
  """A checkpoint opened once: the module, its params, its metadata and its step."""

  model: FocalNet
  params: Any
  meta: dict[str, Any]
  step: int
  path: str


def checkpoint_dir(path: str) -> str:
  """A training workdir (holding checkpoints/) or a checkpoint directory -> the latter."""
  path = os.path.abspath(os.path.expanduser(path))
  nested = os.path.join(path, "checkpoints")
  return nested if os.path.isdir(nested) else path


def load_model(path: str, *, step: int | None = None, ema: bool = False, dtype: str | None = None) -> LoadedModel:
  """(model, params, meta, step, path) of a checkpoint written by train.py or by the converter,
  read in one restore; or of published weights (a weight file, a hub snapshot or HF directory, a
  hub id: `focalnet_jax.from_pretrained`), whose meta carries their preprocessing and class names."""
  if pretrained.is_published(path):
    if step is not None or ema:
      raise ValueError(f"{path!r} holds published weights: they have no steps and no EMA copy; drop --step/--ema.")
    loaded = pretrained.from_pretrained(path, **({"dtype": dtype} if dtype else {}))
    return LoadedModel(loaded.model, loaded.variables["params"], loaded.info.meta(), 0, loaded.info.directory)
  ckpt = checkpoint_dir(path)
  state, meta, step = checkpoint.restore_state(ckpt, step=step)
  if "model" not in meta:
    raise ValueError(f"Checkpoint {ckpt!r} has no 'model' in its metadata; it was not written by "
                     "focalnet_jax (train.py or python -m focalnet_jax.convert).")
  key = "ema_params" if ema else "params"
  if key not in state:
    raise KeyError(f"Checkpoint {ckpt!r} step {step} has no {key!r} (it has {sorted(state)})."
                   + (" It was written without EMA; evaluate the raw params instead." if ema else ""))
  checkpoint.check_finite(state[key], f"Checkpoint {os.path.join(ckpt, str(step))!r}")
  overrides = dict(meta.get("model_overrides", {}))
  if dtype:
    overrides["dtype"] = dtype
  return LoadedModel(variants.create_model(meta["model"], **overrides), state[key], meta, step, ckpt)


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
  or, for published weights, their own eval preprocessing, or, for a converted checkpoint, the
  variant's own resolution."""
  config = base.copy_and_resolve_references()
  trained = meta.get("config")
  if trained:
    for key in DATA_SETTINGS:
      if trained.get(key) is not None:
        config[key] = trained[key]
    if "aug" in trained:
      config.aug.mean, config.aug.std = tuple(trained["aug"]["mean"]), tuple(trained["aug"]["std"])
  elif meta.get("preprocessing"):  # published weights (pretrained.PretrainedInfo.meta)
    prep = meta["preprocessing"]
    config.image_size, config.crop_ratio, config.interpolation = (
        prep["image_size"], prep["crop_ratio"], prep["interpolation"])
    config.aug.mean, config.aug.std = tuple(prep["mean"]), tuple(prep["std"])
  else:
    config.image_size = variants.default_image_size(meta["model"])
  return config


def _label_folder_by_model(config: ml_collections.ConfigDict, meta: dict[str, Any],
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


def default_report_path(loaded: LoadedModel, config, ema: bool) -> str:
  """Where a report goes unless told otherwise: beside the checkpoint, named by split, step and EMA."""
  name = config.dataset.replace("/", "_").replace(":", "_")
  return os.path.join(loaded.path, f"eval_{name}_{config.eval_split}_step{loaded.step}{'_ema' if ema else ''}.json")


def evaluate_checkpoint(checkpoint_or_path: LoadedModel | str, config: ml_collections.ConfigDict, *,
                        step: int | None = None, ema: bool = False, dtype: str | None = None,
                        output: str | None = None, write: bool = True) -> dict[str, Any]:
  """Evaluates a checkpoint (a path, or one opened by `load_model`) on `config.dataset` /
  `config.eval_split` and returns the report; with `write` (process 0) it is also written as
  JSON (`output`, default beside the checkpoint; see `write_report`)."""
  from focalnet_jax import data as data_lib  # noqa: PLC0415

  loaded = checkpoint_or_path
  if isinstance(loaded, str):
    loaded = load_model(loaded, step=step, ema=ema, dtype=dtype)
  model, params = loaded.model, loaded.params
  model.check_image_size(config.image_size, config.image_size)
  n_model = num_classes_of(params)
  config = _label_folder_by_model(config, loaded.meta, n_model)
  dataset = data_lib.from_config(config)
  info = dataset.info(config)
  subset = labels.subset_indices(config.dataset)
  if info.num_classes != n_model:
    raise ValueError(
        f"The checkpoint's head has {n_model} classes but {config.dataset!r} has {info.num_classes}. "
        "Evaluate on data with the same label space (or fine-tune first with train.py --config.init_from)."
    )
  mesh = sharding.make_mesh(-1, 1)
  if config.eval_batch_size % mesh.devices.size:
    raise ValueError(f"eval_batch_size={config.eval_batch_size} must be divisible by the {mesh.devices.size} devices.")
  params = jax.device_put(params, sharding.replicated(mesh))
  logits_fn = eval_lib.model_logits_fn(model, config.model.chunk_elements)
  step_fn = jax.jit(eval_lib.make_eval_step(logits_fn, n_model, subset), out_shardings=sharding.replicated(mesh))
  t0 = time.time()
  with jax.set_mesh(mesh):
    batches = dataset.eval_batches(config, process_index=jax.process_index(), process_count=jax.process_count())
    result = eval_lib.evaluate(step_fn, params, batches, sharding.batch_sharding(mesh), n_model,
                               num_batches=-(-info.num_eval // config.eval_batch_size))
  elapsed = time.time() - t0
  report = {
      "checkpoint": loaded.path, "step": int(loaded.step), "ema": ema, "model": loaded.meta["model"],
      "dataset": config.dataset, "split": config.eval_split, "image_size": config.image_size,
      "crop_ratio": config.crop_ratio, "interpolation": config.interpolation,
      **result, "images_per_s": result["num_examples"] / max(elapsed, 1e-9), "seconds": elapsed,
  }
  # 'top5' is top-k with k = min(5, classes): with fewer classes it is labelled by its real k.
  report["top_k"] = eval_lib.top_k_of(n_model if subset is None else len(subset))
  if subset is not None:
    report["class_subset"] = f"{len(subset)} classes of {config.dataset}"
  if write and jax.process_index() == 0:
    report["output"] = write_report(report, output or default_report_path(loaded, config, ema))
  return report


def write_report(report: dict[str, Any], output: str) -> str:
  """Writes `report` as JSON to `output` (atomically, its directory created); returns the path."""
  atomic.write_json(output, report)
  return output
