"""PyTorch FocalNet state dict -> our Flax params, one key per parameter.

Conversion walks our parameter tree (from `jax.eval_shape`; nothing is initialised) and looks
up, for every leaf, the one key it comes from (`layouts.torch_key`), so missing, unexpected and
mis-shaped tensors are all reported together.
"""
from __future__ import annotations

import collections
import re
from typing import Any, Mapping, Sequence

import numpy as np

from focalnet_jax.data.labels import IMAGENET1K_CLASSES, IMAGENET22K_CLASSES
from focalnet_jax.weights.diagnose import Problems, report
from focalnet_jax.weights.layouts import Layout, detect_layout, get_layout, torch_key
from focalnet_jax.weights.reading import unwrap_state_dict

Path = tuple[str, ...]


def convert_state_dict(
    state_dict: Mapping[str, Any],
    model_name: str,
    *,
    drop_head: bool = False,
    head_to_1k: bool = False,
    head_seed: int = 0,
    backbone: bool = False,
    detection: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
  """Converts a PyTorch FocalNet state dict into `{'params': ...}` for `create_model(model_name,
  **overrides)`, as nested dicts of float32 numpy arrays.

  `backbone=True` targets `create_backbone(model_name, detection=detection, **overrides)`
  instead (a `FocalNetBackbone`; `overrides` may hold `out_indices`, `out_norms`,
  `conv_stem_padding`): what the backbone does not use is dropped (`split_backbone` lists it:
  an mmdet detector's neck and heads, a classifier's head and final norm, stages after the last
  output, unselected output norms). `out_norms` defaults to whether the checkpoint has a
  `norm{i}` for every output (official detection checkpoints do; classifiers and HF don't).

  `state_dict`: torch tensors or numpy arrays, in the official, timm or HF transformers layout
  (detected from the keys), possibly wrapped as {'model': ...} or {'state_dict': ...}.
  Head handling (the checkpoint's classifier must otherwise match num_classes exactly):
    - `drop_head=True`: the checkpoint's head is ignored. If the model has a head (num_classes
      > 0) it is freshly initialised as in training (truncated normal std 0.02, zero bias,
      seeded by `head_seed`), so the result always has exactly the model's parameter tree.
    - `head_to_1k=True`: a 21842-class (ImageNet-22K) head is cut to its first 1000 rows for a
      1000-class model. The official reordered 22K label map puts the ImageNet-1K classes
      first (1K class 850 has no 22K counterpart), so the first 1000 logits are the 1K classes.
  Raises ValueError listing every missing, unexpected and mis-shaped tensor, with the variant
  or overrides the checkpoint would fit when they can be read off its keys.
  """
  from flax import traverse_util

  from focalnet_jax.model.variants import create_model

  if drop_head and head_to_1k:
    raise ValueError("drop_head and head_to_1k exclude each other: drop the head, or cut it to 1K.")
  if backbone and head_to_1k:
    raise ValueError("head_to_1k cuts a classifier's head; a backbone (backbone=True) has none.")
  if detection and not backbone:
    raise ValueError("detection=True applies the detection backbones' settings: use it with backbone=True.")
  full = unwrap_state_dict(state_dict)
  layout, prefix = detect_layout(list(full))
  table = get_layout(layout)
  if backbone:
    model = _backbone_model(model_name, full, table, prefix, detection, overrides)
    state_dict, _ = split_backbone(full, table, prefix, model.out_indices, model.out_norms)
  else:
    model, state_dict = create_model(model_name, **overrides), full
  targets = _target_shapes(model)
  if head_to_1k:
    _check_head_to_1k(state_dict, table, model.num_classes)
  wanted = {path: torch_key(path, table, postln=bool(model.use_postln), prefix=prefix) for path in targets}
  if drop_head:  # the head is neither taken from the checkpoint nor missing from it
    wanted = {path: key for path, key in wanted.items() if path[0] != "head"}
  params, problems = _take(state_dict, wanted, targets, table, drop_head, head_to_1k)
  if problems:
    settings = _backbone_settings(model, detection) if backbone else None
    raise ValueError(report(problems, full, layout, prefix, model_name, overrides, model.num_classes,
                            backbone=settings))
  if drop_head and ("head", "kernel") in targets:
    params.update(_new_head(targets, head_seed))
  return {"params": traverse_util.unflatten_dict(params)}




def _backbone_model(model_name: str, state_dict: Mapping[str, Any], table: Layout, prefix: str, detection: bool,
                    overrides: Mapping[str, Any]) -> Any:
  """The target FocalNetBackbone; `out_norms`, unless given, as the checkpoint has them."""
  from focalnet_jax.model.backbone import create_backbone

  kwargs = dict(overrides)
  if "out_norms" not in kwargs:
    outputs = create_backbone(model_name, detection=detection, **kwargs).out_indices
    kwargs["out_norms"] = all(f"{prefix}{table.output_norm.format(i=i)}.weight" in state_dict for i in outputs)
  return create_backbone(model_name, detection=detection, **kwargs)


def backbone_conversion(state_dict: Mapping[str, Any], model_name: str, *, detection: bool = False,
                        **overrides: Any) -> tuple[dict[str, Any], dict[str, list[str]]]:
  """(settings, dropped) of `convert_state_dict(state_dict, model_name, backbone=True, ...)`:
  the backbone settings a checkpoint records to be rebuilt (`out_indices`, `out_norms`,
  `detection`), and what the conversion drops (`split_backbone`), for messages."""
  full = unwrap_state_dict(state_dict)
  layout, prefix = detect_layout(list(full))
  model = _backbone_model(model_name, full, get_layout(layout), prefix, detection, overrides)
  _, dropped = split_backbone(full, layout, prefix, model.out_indices, model.out_norms)
  return _backbone_settings(model, detection), dropped


def _backbone_settings(model: Any, detection: bool) -> dict[str, Any]:
  """What a backbone checkpoint records to be rebuilt (besides the variant and its overrides)."""
  return {"out_indices": list(model.out_indices), "out_norms": bool(model.out_norms), "detection": bool(detection)}


def split_backbone(state_dict: Mapping[str, Any], layout: str | Layout, prefix: str, out_indices: Sequence[int],
                   out_norms: bool) -> tuple[dict[str, Any], dict[str, list[str]]]:
  """(the entries a backbone with `out_indices`/`out_norms` takes, {what: keys} it drops).

  Dropped: keys outside the backbone's prefix (an mmdet `neck.`, `rpn_head.`, `decode_head.`,
  ...; grouped by their first name), the classifier's head and final norm, stages after the last
  output, and `norm{i}` of outputs not selected (or all of them without `out_norms`). Everything
  else is kept, so a key that fits nowhere is still reported as unexpected.
  """
  table = get_layout(layout)
  last = max(out_indices)
  norm = table.output_norm_pattern(prefix)
  kept, dropped = {}, collections.defaultdict(list)
  for key, value in state_dict.items():
    m = norm.match(key)
    stage = table.stage_of(key, prefix)
    if table.is_head_key(key):
      dropped["the classifier's head"].append(key)
    elif not key.startswith(prefix):
      dropped[f"outside the backbone: {key.split('.')[0]}"].append(key)
    elif key.startswith(f"{prefix}{table.final_norm}."):
      dropped["the classifier's final norm"].append(key)
    elif m and not (out_norms and int(m.group(1)) in out_indices):
      dropped["output norms not selected" if out_norms else "output norms (out_norms=False)"].append(key)
    elif stage is not None and stage > last:
      dropped[f"stages after the last output ({last})"].append(key)
    else:
      kept[key] = value
  return kept, {reason: sorted(keys) for reason, keys in dropped.items()}


def _target_shapes(model: Any) -> dict[Path, Any]:
  """Our parameter shapes by path, in forward order (so errors name the stem first)."""
  import jax
  import jax.numpy as jnp
  from flax import traverse_util

  side = model.stride
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, side, side, 3), jnp.float32))
  flat = traverse_util.flatten_dict(shapes["params"])
  return {p: flat[p] for p in sorted(flat, key=_forward_order)}


def _take(state_dict: Mapping[str, np.ndarray], wanted: Mapping[Path, str], targets: Mapping[Path, Any],
          table: Layout, drop_head: bool, head_to_1k: bool) -> tuple[dict[Path, np.ndarray], Problems]:
  """The converted array of every wanted key, and every way the state dict does not fit."""
  used = set(wanted.values())
  if drop_head:
    used |= {k for k in state_dict if table.is_head_key(k)}
  missing = sorted(k for k in wanted.values() if k not in state_dict)
  unexpected = sorted(k for k in state_dict if k not in used)
  params, mismatched = {}, []
  for path, key in wanted.items():
    if key not in state_dict:
      continue
    value = state_dict[key]
    expected = tuple(targets[path].shape)
    converted = _to_flax(value, len(expected))
    if head_to_1k and path[0] == "head":
      converted = converted[..., :IMAGENET1K_CLASSES]
    if converted.shape != expected:
      mismatched.append((key, tuple(value.shape), _torch_shape(expected, value.shape)))
      continue
    params[path] = np.ascontiguousarray(converted, dtype=np.float32)
  return params, Problems(missing, unexpected, mismatched)


def _new_head(targets: Mapping[Path, Any], seed: int) -> dict[Path, np.ndarray]:
  """A head initialised as in training: truncated normal std 0.02, zero bias."""
  import jax
  import jax.numpy as jnp

  from focalnet_jax.model import dense_init

  kernel = dense_init(jax.random.key(seed), targets[("head", "kernel")].shape, jnp.float32)
  return {("head", "kernel"): np.asarray(kernel),
          ("head", "bias"): np.zeros(targets[("head", "bias")].shape, np.float32)}


def _check_head_to_1k(state_dict: Mapping[str, np.ndarray], table: Layout, num_classes: int) -> None:
  key = table.head_key()
  rows = state_dict[key].shape[0] if key in state_dict else 0
  if num_classes != IMAGENET1K_CLASSES or rows != IMAGENET22K_CLASSES:
    raise ValueError(
        f"head_to_1k cuts a {IMAGENET22K_CLASSES}-class ImageNet-22K head to the {IMAGENET1K_CLASSES} "
        f"ImageNet-1K classes, but the checkpoint's head ({key!r}) has {rows or 'no'} rows and the "
        f"model has num_classes={num_classes}. Use it only with num_classes={IMAGENET1K_CLASSES} "
        f"(CLI: --override num_classes={IMAGENET1K_CLASSES}) on a 22K checkpoint; otherwise keep the "
        "head as it is (num_classes equal to its rows) or drop it (drop_head=True)."
    )


def _forward_order(path: Path) -> tuple[int, Path]:
  first = path[0]
  if re.fullmatch(r"norm\d+", first):  # a backbone's output norm, after its stage
    return (int(first[4:]) + 1, path)
  rank = {"patch_embed": 0, "norm": 1_000_000, "head": 1_000_001}.get(first)
  return (int(first.split("_")[1]) + 1 if rank is None else rank, path)


def _to_flax(value: np.ndarray, expected_ndim: int) -> np.ndarray:
  """PyTorch -> Flax layout: conv (O, I/g, kh, kw) -> (kh, kw, I/g, O), which also turns the
  depthwise (C, 1, k, k) into (k, k, 1, C); Linear (O, I) -> (I, O); a 1x1 conv used as a
  Linear (timm's f/proj/fc1/fc2, and `h` everywhere) -> (I, O). Other ranks are left for the
  shape check to report."""
  if expected_ndim == 4:
    return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value
  if expected_ndim == 2:
    if value.ndim == 4 and value.shape[2:] == (1, 1):
      value = value[:, :, 0, 0]
    return value.T if value.ndim == 2 else value
  return value


def _torch_shape(flax_shape: tuple[int, ...], like: tuple[int, ...]) -> tuple[int, ...]:
  """The PyTorch shape that would convert to `flax_shape`, in the style of tensor shape `like`."""
  if len(flax_shape) == 4:
    kh, kw, i, o = flax_shape
    return (o, i, kh, kw)
  if len(flax_shape) == 2:
    i, o = flax_shape
    return (o, i, 1, 1) if len(like) == 4 else (o, i)
  return tuple(flax_shape)


def adapt_params(source: Mapping[str, Any], target: Mapping[str, Any], *, use_global_context: bool = True) -> dict:
  """`source` params (e.g. a classifier's) reshaped onto `target`'s tree (e.g. a detection
  backbone's fresh init), as the official detection code initialises from classification weights:

    - a depthwise focal kernel of another size is zero-padded at the centre (3 -> 9) or
      centre-cropped, so a larger window computes what the smaller one did;
    - `f`'s gate outputs follow the levels: existing gates are kept, the global-context gate
      moves to the end, gates of new levels are zero (so new levels add nothing to Z^out);
    - what only `target` has (new levels' kernels, `norm0..3`) keeps its value in `target`, and
      what only `source` has (the head, the final norm) is dropped.

  With the same focal levels and only larger windows, the result computes the classifier's stage
  maps exactly. Extra levels change the global context (it pools the last level), so fine-tuning
  starts close to, not at, the classifier's function.
  """
  from flax import traverse_util

  src = traverse_util.flatten_dict(dict(source))
  out = {}
  for path, value in traverse_util.flatten_dict(dict(target)).items():
    old = src.get(path)
    shape = tuple(np.shape(value))
    if old is None or tuple(np.shape(old)) == shape:
      out[path] = np.asarray(value if old is None else old)
    elif path[-1].startswith("focal_layers_"):
      out[path] = _resize_kernel(np.asarray(old), shape[0])
    elif path[-2] == "f":
      channels = np.shape(src[path[:-1] + ("kernel",)])[0]
      out[path] = _expand_gates(np.asarray(old), shape[-1], channels, use_global_context)
    else:
      raise ValueError(f"{'/'.join(path)}: source shape {np.shape(old)} cannot be adapted to {shape}.")
  return traverse_util.unflatten_dict(out)


def _resize_kernel(kernel: np.ndarray, size: int) -> np.ndarray:
  """A (k, k, 1, C) kernel zero-padded or cropped about its centre to (size, size, 1, C)."""
  k = kernel.shape[0]
  if size >= k:
    p = (size - k) // 2
    return np.pad(kernel, ((p, p), (p, p), (0, 0), (0, 0)))
  c = (k - size) // 2
  return kernel[c:c + size, c:c + size]


def _expand_gates(value: np.ndarray, width: int, channels: int, use_global_context: bool) -> np.ndarray:
  """`f`'s kernel (C, 2C + G) or bias (2C + G), its G gate columns mapped onto `width - 2C`:
  level gates kept (new ones zero), the global-context gate last."""
  gates_old, gates_new = value.shape[-1] - 2 * channels, width - 2 * channels
  glob = int(use_global_context)
  keep = 2 * channels + min(gates_old, gates_new) - glob
  new = np.zeros(value.shape[:-1] + (width,), value.dtype)
  new[..., :keep] = value[..., :keep]
  if glob:
    new[..., -1] = value[..., -1]
  return new
