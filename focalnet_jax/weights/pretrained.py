"""Published FocalNet weights in one call: `from_pretrained(source)` -> (model, variables).

    model, variables = focalnet_jax.from_pretrained("timm/focalnet_tiny_srf.ms_in1k")

`source` is
  - a weight file: `.safetensors`, `.pth`/`.pt` or `.bin`, in the official, timm or HF
    transformers key layout (`focalnet_jax.weights` reads and converts it);
  - a directory: a timm hub snapshot or an HF transformers `save_pretrained` directory (a weight
    file beside its `config.json`), or a focalnet_jax checkpoint (a train.py workdir or its
    checkpoints/, the converter's output; `step=` and `ema=` pick what to read);
  - a Hugging Face hub id (`timm/focalnet_tiny_srf.ms_in1k`, `microsoft/focalnet-tiny`), fetched
    through `huggingface_hub` (optional), so its cache, `HF_HOME` and `HF_HUB_OFFLINE=1` behave as
    they do for timm and transformers.
The variant is read off the weights' keys and shapes and the `config.json` beside them (timm's
`architecture`, HF's config); `overrides` are FocalNet fields, as in `create_model`.

The result unpacks as `(model, variables)` and carries `.info` (`PretrainedInfo`): the weights'
eval preprocessing (image size, crop ratio, interpolation, mean, std) and class names, e.g.
`load_eval_images(paths, **pretrained.info.transform)`. timm evaluates its `ms_in1k` weights at
crop 0.9, the official code (whose weights HF republishes) at 0.875. This is the one loader:
eval.py, `focalnet_jax.evaluation`, export and visualize read checkpoints through it, and the
rules here (`_published_info`, `info_from_meta`, `_class_names`) are the only ones that say how
weights are preprocessed and what their classes are called.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Mapping, Sequence

# The files of a published snapshot (timm's and HF's hub layout), weights in order of preference.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
CONFIG_FILE = "config.json"
_WEIGHT_EXTENSIONS = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
# The official recipe's eval transform (microsoft/FocalNet, and so HF's republished weights).
_OFFICIAL_CROP = 0.875
# timm's focalnet pretrained configs: crop 0.9 at 224 px, the whole image at 384 px.
_TIMM_CROP = {224: 0.9, 384: 1.0}


@dataclasses.dataclass(frozen=True)
class PretrainedInfo:
  """What travels with published weights: their variant and eval preprocessing, and class names."""

  variant: str
  overrides: Mapping[str, Any]
  image_size: int
  crop_ratio: float
  interpolation: str
  mean: tuple[float, ...]
  std: tuple[float, ...]
  class_names: tuple[str, ...]
  source: str  # as given: a path or a hub id
  layout: str  # 'timm', 'hf', 'official' or 'focalnet_jax'
  directory: str  # where reports about these weights go by default (a checkpoint's own directory)
  step: int = 0  # the checkpoint step read (published weights: 0)
  # Checkpoint-style metadata: a focalnet_jax checkpoint's own (its training config and all), or
  # for published weights their variant, preprocessing, class names and source.
  meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def transform(self) -> dict[str, Any]:
    """The keyword arguments of `focalnet_jax.data.load_eval_images` that give these weights' pixels."""
    return dict(image_size=self.image_size, crop_ratio=self.crop_ratio, interpolation=self.interpolation,
                mean=self.mean, std=self.std)

  def load_images(self, paths: Sequence[str]):
    """Image files -> float32 (N, H, W, 3), preprocessed as these weights were evaluated."""
    from focalnet_jax.data.eval_images import load_eval_images

    return load_eval_images(paths, **self.transform)


class Pretrained(tuple):
  """`(model, variables)`, so `model, variables = from_pretrained(...)` works, with `.info`."""

  def __new__(cls, model: Any, variables: dict[str, Any], info: PretrainedInfo) -> "Pretrained":
    self = super().__new__(cls, (model, variables))
    self.info = info
    return self

  @property
  def model(self):
    return self[0]

  @property
  def variables(self) -> dict[str, Any]:
    return self[1]

  @property
  def params(self) -> Any:
    return self[1]["params"]

  def __repr__(self) -> str:
    return f"Pretrained({self.info.variant} from {self.info.source!r}, {self.info.layout} layout)"


def is_hub_id(source: str) -> bool:
  """Whether `source` names a hub repository ('org/name') rather than a local path."""
  source = os.fspath(source)
  return (bool(_HUB_ID.match(source)) and not os.path.exists(source)
          and not source.lower().endswith(_WEIGHT_EXTENSIONS))


def is_published(source: str) -> bool:
  """Whether `source` is published weights (a hub id, a weight file or a snapshot directory),
  as opposed to a focalnet_jax checkpoint."""
  source = os.path.expanduser(os.fspath(source))
  if os.path.isdir(source):
    return any(os.path.isfile(os.path.join(source, f)) for f in WEIGHT_FILES)
  return os.path.isfile(source) or is_hub_id(source)


def from_pretrained(source: str | os.PathLike, *, variant: str | None = None, step: int | None = None,
                    ema: bool = False, trust_pickle: bool = False, **overrides: Any) -> Pretrained:
  """Published or saved FocalNet weights -> `(model, variables)` with `.info` (see the module docstring).

  `variant` names the architecture where it cannot be read off the weights; `overrides` are
  FocalNet fields (`dtype=jnp.bfloat16`, `num_classes=...`), as in `create_model`. For a
  focalnet_jax checkpoint, `step` picks a step (default: the latest) and `ema` its EMA weights.
  `trust_pickle` reads `.pth` files that pickle more than tensors (only files you trust).
  """
  source = os.fspath(source)
  path = hub_snapshot(source) if is_hub_id(source) else os.path.abspath(os.path.expanduser(source))
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"No checkpoint, weight file or hub id at {source!r}: pass a .safetensors/.pth/.bin file, a directory "
        "(a hub snapshot, an HF save_pretrained directory or a focalnet_jax checkpoint) or a hub id such as "
        "'timm/focalnet_tiny_srf.ms_in1k'.")
  if os.path.isdir(path) and not is_published(path):
    return _from_checkpoint(source, path, variant, step, ema, overrides)
  if step is not None or ema:
    raise ValueError(f"{source!r} holds published weights: they have no steps and no EMA copy; drop step=/ema= "
                     "(eval.py: --step/--ema).")
  return _from_published(source, path, variant, trust_pickle, overrides)


def _from_published(source: str, path: str, variant: str | None, trust_pickle: bool,
                    overrides: dict[str, Any]) -> Pretrained:
  import jax

  from focalnet_jax import checkpoint
  from focalnet_jax.model.variants import create_model
  from focalnet_jax.weights.layouts import detect_layout
  from focalnet_jax.weights.reading import load_checkpoint
  from focalnet_jax.weights.to_flax import convert_state_dict

  weights = path if os.path.isfile(path) else next(
      os.path.join(path, f) for f in WEIGHT_FILES if os.path.isfile(os.path.join(path, f)))
  config = _read_config(os.path.dirname(weights))
  state_dict = load_checkpoint(weights, trust_pickle=trust_pickle)
  layout, prefix = detect_layout(list(state_dict))
  variant, overrides = _architecture(state_dict, layout, prefix, config, variant, overrides)
  variables = convert_state_dict(state_dict, variant, **overrides)
  checkpoint.check_finite(variables, repr(weights))
  model = create_model(variant, **overrides)
  directory = os.path.abspath(source.replace("/", "--")) if is_hub_id(source) else os.path.dirname(weights)
  info = _published_info(variant, overrides, layout, config, model.num_classes, source, directory)
  return Pretrained(model, jax.device_put(variables), info)


def _read_config(directory: str) -> dict[str, Any] | None:
  """The `config.json` beside a weight file (timm's or HF's), if any."""
  path = os.path.join(directory, CONFIG_FILE)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path} is not valid JSON ({e}); delete or fix it to load the weights beside it.") from e


def _hf_fields(config: Mapping[str, Any]) -> dict[str, Any]:
  """The FocalNet fields an HF transformers FocalNetConfig sets that its weights' keys do not show."""
  names = {"use_post_layernorm": "use_postln", "normalize_modulator": "normalize_modulator",
           "layerscale_value": "layerscale_value", "mlp_ratio": "mlp_ratio"}
  return {ours: config[theirs] for theirs, ours in names.items() if theirs in config}


def _architecture(state_dict: Mapping[str, Any], layout: str, prefix: str, config: Mapping[str, Any] | None,
                  variant: str | None, overrides: dict[str, Any]) -> tuple[str, dict[str, Any]]:
  """(variant, overrides) that fit the weights: the named variant, timm's `architecture`, else the
  published variant whose architecture the keys and shapes show; plus the head size and what HF's
  config sets that the keys cannot show (post-norm, normalize_modulator)."""
  from focalnet_jax.model.variants import list_models, model_kwargs
  from focalnet_jax.weights.diagnose import infer_architecture, matching_variants

  arch = infer_architecture(state_dict, layout, prefix)
  if variant is None and config and config.get("architecture") in list_models():
    variant = config["architecture"]
  if variant is None:
    found = matching_variants(arch)
    if not found:
      shown = ", ".join(f"{k}={v}" for k, v in arch.items())
      raise ValueError(
          f"The weights ({layout} layout: {shown}) fit no published FocalNet variant. Name the nearest one and "
          "the fields that differ: from_pretrained(source, variant='focalnet_tiny_srf', depths=..., ...).")
    variant = found[0][0]
  extra = {"num_classes": arch["num_classes"]}
  if config and config.get("model_type") == "focalnet":
    extra.update(_hf_fields(config))
  defaults = model_kwargs(variant, **overrides)
  overrides = dict(overrides)
  for key, value in extra.items():
    if key not in overrides and defaults.get(key) != value:
      overrides[key] = value
  return variant, overrides


def _published_info(variant: str, overrides: Mapping[str, Any], layout: str, config: Mapping[str, Any] | None,
                    num_classes: int, source: str, directory: str) -> PretrainedInfo:
  """The eval preprocessing and class names of published weights, from their config where it says."""
  from focalnet_jax.data.eval_images import IMAGENET_MEAN, IMAGENET_STD
  from focalnet_jax.model.variants import default_image_size

  config = config or {}
  size = default_image_size(variant)
  crop, interpolation, mean, std = _OFFICIAL_CROP, "bicubic", IMAGENET_MEAN, IMAGENET_STD
  names = None
  if layout == "timm":
    cfg = config.get("pretrained_cfg", {})
    size = int(cfg.get("input_size", (3, size, size))[-1])
    crop = float(cfg.get("crop_pct", _TIMM_CROP.get(size, 0.9)))
    interpolation = cfg.get("interpolation", interpolation)
    mean, std = tuple(cfg.get("mean", mean)), tuple(cfg.get("std", std))
    names = config.get("label_names")
  elif layout == "hf":
    size = int(config.get("image_size", size))
    id2label = config.get("id2label") or {}
    labels = [id2label.get(str(i), id2label.get(i)) for i in range(len(id2label))]
    if labels and not all(str(n).startswith("LABEL_") for n in labels):  # HF's placeholder names
      names = labels
  info = PretrainedInfo(variant, dict(overrides), size, crop, interpolation, tuple(mean), tuple(std),
                        _class_names(names, num_classes), source, layout, directory)
  meta = {"model": variant, "model_overrides": dict(overrides), "class_names": list(info.class_names),
          "preprocessing": info.transform, "source": {"path": source, "layout": layout}}
  return dataclasses.replace(info, meta=meta)


def _class_names(names: Sequence[str] | None, num_classes: int) -> tuple[str, ...]:
  """`names` when there is one per class, else ImageNet's (1K or the official 22K), else class_<i>."""
  from focalnet_jax.data import labels

  if names and len(names) == num_classes:
    return tuple(str(n) for n in names)
  return labels.imagenet_class_names(num_classes) or tuple(f"class_{i}" for i in range(num_classes))


def checkpoint_dir(path: str) -> str:
  """A training workdir (holding checkpoints/) or a checkpoint directory -> the latter."""
  path = os.path.abspath(os.path.expanduser(path))
  nested = os.path.join(path, "checkpoints")
  return nested if os.path.isdir(nested) else path


def _from_checkpoint(source: str, path: str, variant: str | None, step: int | None, ema: bool,
                     overrides: dict[str, Any]) -> Pretrained:
  """A focalnet_jax checkpoint (train.py's workdir or the converter's output) read in one restore,
  with its saved settings; its params stay numpy arrays (the caller places them)."""
  from focalnet_jax import checkpoint
  from focalnet_jax.model.variants import create_model

  ckpt = checkpoint_dir(path)
  state, meta, step = checkpoint.restore_state(ckpt, step=step)
  if "model" not in meta:
    raise ValueError(f"Checkpoint {ckpt!r} has no 'model' in its metadata; it was not written by "
                     "focalnet_jax (train.py or python -m focalnet_jax.tools.convert).")
  params = checkpoint.params_of(state, ckpt, step, ema)
  if variant is not None and variant != meta["model"]:
    raise ValueError(f"{source!r} holds {meta['model']}, not {variant}; drop variant= to load it.")
  overrides = {**meta.get("model_overrides", {}), **overrides}
  model = create_model(meta["model"], **overrides)
  info = info_from_meta(meta, model.num_classes, source, ckpt)
  return Pretrained(model, {"params": params}, dataclasses.replace(info, overrides=overrides, step=step))


def info_from_meta(meta: Mapping[str, Any], num_classes: int, source: str, directory: str) -> PretrainedInfo:
  """The `PretrainedInfo` of a focalnet_jax checkpoint: its training run's eval settings, the
  preprocessing of the weights it was converted from, else the official recipe's (whose values
  configs/default.py also holds)."""
  from focalnet_jax.data.eval_images import IMAGENET_MEAN, IMAGENET_STD
  from focalnet_jax.model.variants import default_image_size

  settings = dict(image_size=default_image_size(meta["model"]), crop_ratio=_OFFICIAL_CROP,
                  interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD)
  trained = meta.get("config") or {}
  settings.update({k: trained[k] for k in ("image_size", "crop_ratio", "interpolation") if trained.get(k)})
  if "aug" in trained:
    settings.update(mean=trained["aug"]["mean"], std=trained["aug"]["std"])
  settings.update(meta.get("preprocessing") or {})
  return PretrainedInfo(meta["model"], dict(meta.get("model_overrides", {})), int(settings["image_size"]),
                        float(settings["crop_ratio"]), settings["interpolation"], tuple(settings["mean"]),
                        tuple(settings["std"]), _class_names(meta.get("class_names"), num_classes), source,
                        "focalnet_jax", directory, meta=dict(meta))


def hub_snapshot(repo_id: str) -> str:
  """The local snapshot directory of hub repository `repo_id` holding its config and weights, fetched
  through huggingface_hub's cache (offline with HF_HUB_OFFLINE=1: the cached copy, or an error)."""
  try:
    import huggingface_hub  # noqa: F401
  except ImportError as e:
    raise ImportError(
        f"{repo_id!r} is a Hugging Face hub id; fetching it needs huggingface_hub (pip install huggingface_hub). "
        f"Or download it by hand and pass the directory: {manual_download(repo_id)}") from e
  config = _hub_file(repo_id, CONFIG_FILE)
  for name in WEIGHT_FILES:
    weights = _hub_file(repo_id, name, missing_ok=True)
    if weights:
      # Snapshot files are links into the cache's blobs; both lie in the same snapshot folder.
      if os.path.dirname(weights) != os.path.dirname(config):
        raise ValueError(f"{repo_id}: {name} and {CONFIG_FILE} come from different snapshots; "
                         f"download both again: {manual_download(repo_id)}")
      return os.path.dirname(config)
  raise FileNotFoundError(f"The hub repository {repo_id!r} has no {' or '.join(WEIGHT_FILES)} (or they are not "
                          f"in the local cache). Download them: {manual_download(repo_id)}")


def _hub_file(repo_id: str, filename: str, missing_ok: bool = False) -> str | None:
  """huggingface_hub's local path of one file of `repo_id` (downloaded unless cached or offline)."""
  from huggingface_hub import constants, hf_hub_download
  from huggingface_hub.errors import (
      EntryNotFoundError, GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError,
  )

  try:
    return hf_hub_download(repo_id, filename)
  except (RepositoryNotFoundError, GatedRepoError) as e:
    raise FileNotFoundError(
        f"No accessible hub repository {repo_id!r} ({type(e).__name__}). Check the id (e.g. "
        "'timm/focalnet_tiny_srf.ms_in1k', 'microsoft/focalnet-tiny'); private or gated ones need "
        "`hf auth login`.") from e
  except LocalEntryNotFoundError as e:  # offline, or no network, and not in the cache
    if missing_ok:
      return None
    offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else " (the hub could not be reached)"
    raise FileNotFoundError(
        f"{filename} of {repo_id!r} is not in the local huggingface_hub cache ({constants.HF_HUB_CACHE}){offline}. "
        f"On a machine with network: {manual_download(repo_id)}\nthen copy that directory here and pass its path "
        "to from_pretrained (or --checkpoint), or fill this machine's cache with the same command without "
        "--local-dir.") from e
  except EntryNotFoundError:
    if missing_ok:
      return None
    raise FileNotFoundError(f"The hub repository {repo_id!r} has no {filename}; it does not hold timm or HF "
                            "transformers FocalNet weights. Pass a weight file instead.") from None


def manual_download(repo_id: str) -> str:
  """The command that downloads a hub repository's config and weights by hand."""
  return (f"hf download {repo_id} {CONFIG_FILE} {WEIGHT_FILES[0]} --local-dir {repo_id.split('/')[-1]}"
          f"  (ask for {WEIGHT_FILES[1]} where the repository has no {WEIGHT_FILES[0]})")
