"""Converts published PyTorch FocalNet weights into our Flax params.

Three key layouts are published for the same weights (REFERENCE.md, section 4):
  - 'official': microsoft/FocalNet `.pth` files (`patch_embed.*`, `layers.i.downsample.*` at
    the end of stage i, `head.*`), usually wrapped as `{'model': state_dict, ...}`;
  - 'timm': `timm/focalnet_*` on the HF hub (`stem.*`, the downsample at the start of the next
    stage, 1x1 convs where the official code has Linear layers, `ls1.gamma`, `head.fc.*`);
  - 'hf': HF transformers `microsoft/focalnet-*` (`focalnet.embeddings.*`,
    `focalnet.encoder.stages.i.layers.j.*`, `projection_in/_context/_out`, `classifier.*`).
The layout is detected from the keys. Conversion walks our parameter tree (from
`jax.eval_shape`, nothing is initialised) and looks up, for every leaf, the one key it
comes from, so missing, unexpected and mis-shaped tensors are all reported together.

Library: `convert_state_dict(state_dict, 'focalnet_tiny_srf')` -> `{'params': ...}` (numpy
float32). Only reading `.pth`/`.bin` files needs torch; numpy state dicts and `.safetensors`
files convert without it.

CLI (writes an orbax checkpoint that `focalnet_jax.checkpoint.load_params` reads):
  python -m focalnet_jax.convert --model focalnet_tiny_srf \
      --checkpoint focalnet_tiny_srf.pth --output weights/focalnet_tiny_srf
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import sys
from typing import Any, Mapping, Sequence

import numpy as np

NUM_CLASSES_22K = 21842
NUM_CLASSES_1K = 1000
# Official and timm checkpoints wrap the state dict under one of these keys.
_WRAPPER_KEYS = ("model", "state_dict")
# Weight files inside a downloaded HF hub snapshot (timm or transformers), in order of preference.
_SNAPSHOT_FILES = ("model.safetensors", "pytorch_model.bin")
_MAX_MISMATCHES = 8  # shape mismatches listed in an error; a wrong variant mismatches hundreds
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias"}


# --- reading files ------------------------------------------------------------------------


def load_checkpoint(path: str | os.PathLike, trust_pickle: bool = False) -> dict[str, np.ndarray]:
  """Reads a `.safetensors`, `.pth`, `.pt` or `.bin` file into a flat {key: float32 array}.

  `path` may also be a downloaded HF hub snapshot directory holding `model.safetensors` or
  `pytorch_model.bin`. `.safetensors` needs only the `safetensors` package. The pickle formats
  need torch and are read with `weights_only=True`; `trust_pickle=True` lifts that restriction
  (official training checkpoints may also pickle their yacs config): use it only for files you
  trust.
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    found = [os.path.join(path, f) for f in _SNAPSHOT_FILES if os.path.isfile(os.path.join(path, f))]
    if not found:
      raise FileNotFoundError(
          f"{path!r} is a directory without {' or '.join(_SNAPSHOT_FILES)}; pass the weight file itself."
      )
    path = found[0]
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Checkpoint file {path!r} does not exist.")
  ext = os.path.splitext(path)[1].lower()
  if ext == ".safetensors":
    from safetensors.numpy import load_file

    try:
      return unwrap_state_dict(load_file(path))
    except TypeError:  # bfloat16 tensors, which numpy cannot name; JAX's reader can
      from safetensors.flax import load_file as load_file_jax

      return unwrap_state_dict(load_file_jax(path))
  if ext not in (".pth", ".pt", ".bin", ".ckpt"):
    raise ValueError(
        f"Cannot read {path!r}: expected a .safetensors, .pth, .pt or .bin file (got {ext!r})."
    )
  try:
    import torch
  except ImportError as e:
    raise ImportError(
        f"Reading {path!r} ({ext}) needs PyTorch, which is not installed. Install torch (CPU is "
        "enough: pip install torch --index-url https://download.pytorch.org/whl/cpu), or use the "
        ".safetensors file of the same weights (timm and HF publish them), which needs no torch."
    ) from e
  try:
    obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
  except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError and others
    if trust_pickle:
      raise
    raise ValueError(
        f"Could not read {path!r} with torch.load(weights_only=True): {type(e).__name__}: {e}\n"
        "The file pickles more than tensors (official training checkpoints also hold their "
        "config). If you trust the file, pass trust_pickle=True (CLI: --trust-pickle)."
    ) from e
  return unwrap_state_dict(obj)


def unwrap_state_dict(obj: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The flat state dict inside `obj` ({'model': sd}, {'state_dict': sd} or sd itself),
  as float32 numpy arrays, with a DistributedDataParallel 'module.' prefix removed."""
  if not isinstance(obj, Mapping):
    raise ValueError(f"Expected a state dict (a mapping of names to tensors), got {type(obj).__name__}.")
  for key in _WRAPPER_KEYS:
    if isinstance(obj.get(key), Mapping):
      obj = obj[key]
      break
  out = {}
  for key, value in obj.items():
    if not hasattr(value, "shape"):
      continue  # scalars and metadata saved next to the weights (epoch, config, ...)
    out[key] = _to_numpy(value)
  if out and all(k.startswith("module.") for k in out):
    out = {k[len("module.") :]: v for k, v in out.items()}
  return out


def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor; numpy() cannot take bfloat16, so go via float32
    value = value.detach().cpu()
    value = value.float() if value.is_floating_point() else value
    value = value.numpy()
  value = np.asarray(value)
  floating = np.issubdtype(value.dtype, np.floating) or value.dtype.name == "bfloat16"
  return value.astype(np.float32, copy=False) if floating else value  # no copy of float32 weights


# --- layouts and key names ----------------------------------------------------------------


def detect_layout(keys: Sequence[str]) -> tuple[str, str]:
  """(layout, prefix) of a state dict's keys; prefix is 'focalnet.' or '' for HF, else ''."""
  keys = set(keys)
  if "stem.proj.weight" in keys:
    return "timm", ""
  if "patch_embed.proj.weight" in keys:
    return "official", ""
  for prefix in ("focalnet.", ""):
    if f"{prefix}embeddings.patch_embeddings.projection.weight" in keys:
      return "hf", prefix
  prefixes = collections.Counter(
      ".".join(k.split(".")[:2]) if k.startswith("focalnet.") else k.split(".")[0] for k in keys
  )
  seen = ", ".join(f"{p!r} ({n})" for p, n in prefixes.most_common(12)) or "none (empty state dict)"
  raise ValueError(
      "Unknown checkpoint layout: found none of the stem keys 'patch_embed.proj.weight' "
      "(official microsoft/FocalNet), 'stem.proj.weight' (timm) or "
      "'focalnet.embeddings.patch_embeddings.projection.weight' (HF transformers). "
      f"Key prefixes seen (count): {seen}. Is this a FocalNet classification checkpoint?"
  )


def torch_key(path: tuple[str, ...], layout: str, *, postln: bool = False, prefix: str = "") -> str:
  """The state-dict key that our param at `path` (e.g. ('layers_0', 'blocks_1', 'mlp',
  'fc1', 'kernel')) comes from in `layout`. `postln` matters for timm only (`norm1_post`)."""
  first, *rest = path
  if first == "patch_embed":
    sub, leaf = rest
    module = {
        "official": f"patch_embed.{sub}",
        "timm": f"stem.{sub}",
        "hf": prefix + ("embeddings.patch_embeddings.projection" if sub == "proj" else "embeddings.norm"),
    }[layout]
  elif first == "norm":
    (leaf,) = rest
    module = prefix + "layernorm" if layout == "hf" else "norm"
  elif first == "head":
    (leaf,) = rest
    module = {"official": "head", "timm": "head.fc", "hf": "classifier"}[layout]
  else:
    i = int(first.split("_")[1])
    if rest[0] == "downsample":
      sub, leaf = rest[1:]
      module = {
          "official": f"layers.{i}.downsample.{sub}",
          "timm": f"layers.{i + 1}.downsample.{sub}",  # timm strides at the start of a stage
          "hf": f"{prefix}encoder.stages.{i}.downsample." + ("projection" if sub == "proj" else "norm"),
      }[layout]
    else:
      j = int(rest[0].split("_")[1])
      block = f"{prefix}encoder.stages.{i}.layers.{j}" if layout == "hf" else f"layers.{i}.blocks.{j}"
      inner = rest[1:]
      if inner[0] in ("gamma_1", "gamma_2"):
        return f"{block}.ls{inner[0][-1]}.gamma" if layout == "timm" else f"{block}.{inner[0]}"
      if inner[0] == "modulation" and inner[1].startswith("focal_layers_"):
        return f"{block}.modulation.focal_layers.{int(inner[1].rsplit('_', 1)[1])}.0.weight"
      sub, leaf = inner[-2:]
      if inner[0] == "modulation":
        renames = {
            "official": {},
            "timm": {"ln": "norm"},
            "hf": {
                "f": "projection_in", "h": "projection_context", "proj": "projection_out", "ln": "layernorm",
            },
        }[layout]
        module = f"{block}.modulation.{renames.get(sub, sub)}"
      elif inner[0] == "mlp":
        module = f"{block}.mlp.{sub}"
      else:  # norm1 / norm2
        module = f"{block}.{inner[0]}_post" if layout == "timm" and postln else f"{block}.{inner[0]}"
  return f"{module}.{_LEAF[leaf]}"


def _is_head_key(key: str, layout: str) -> bool:
  return key.startswith({"official": "head.", "timm": "head.", "hf": "classifier."}[layout])


def _forward_order(path: tuple[str, ...]) -> tuple[int, tuple[str, ...]]:
  first = path[0]
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


# --- describing a checkpoint (for error messages) --------------------------------------------


def infer_architecture(state_dict: Mapping[str, Any], layout: str, prefix: str = "") -> dict[str, Any]:
  """The FocalNet kwargs that can be read off a state dict's keys and shapes.

  `use_postln` is only visible in timm's keys (`norm1_post`); official and HF checkpoints
  name pre- and post-norms alike, so it is left out for them.
  """
  stem = {"official": "patch_embed.proj.weight", "timm": "stem.proj.weight"}.get(
      layout, f"{prefix}embeddings.patch_embeddings.projection.weight"
  )
  arch: dict[str, Any] = {}
  if stem in state_dict:
    out, _, k, _ = state_dict[stem].shape
    arch["embed_dim"] = int(out)
    arch["use_conv_embed"] = k == 7
    if k != 7:
      arch["patch_size"] = int(k)
  if layout == "hf":
    block_re = re.compile(rf"^{re.escape(prefix)}encoder\.stages\.(\d+)\.layers\.(\d+)\.")
  else:
    block_re = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.")
  blocks: dict[int, set[int]] = collections.defaultdict(set)
  for key in state_dict:
    m = block_re.match(key)
    if m:
      blocks[int(m.group(1))].add(int(m.group(2)))
  if blocks:
    stages = sorted(blocks)
    arch["depths"] = tuple(len(blocks[i]) for i in stages)
    levels, windows = [], []
    for i in stages:
      block = f"{prefix}encoder.stages.{i}.layers.0" if layout == "hf" else f"layers.{i}.blocks.0"
      focal_re = re.compile(rf"^{re.escape(block)}\.modulation\.focal_layers\.(\d+)\.0\.weight$")
      focal = sorted(int(m.group(1)) for m in map(focal_re.match, state_dict) if m)
      levels.append(len(focal))
      if focal:
        windows.append(int(state_dict[f"{block}.modulation.focal_layers.0.0.weight"].shape[-1]))
    arch["focal_levels"] = tuple(levels)
    if len(windows) == len(levels):
      arch["focal_windows"] = tuple(windows)
  keys = list(state_dict)
  arch["use_layerscale"] = any(k.endswith((".gamma_1", ".ls1.gamma")) for k in keys)
  ln = {"official": "ln", "timm": "norm", "hf": "layernorm"}[layout]
  arch["use_postln_in_modulation"] = any(k.endswith(f".modulation.{ln}.weight") for k in keys)
  if layout == "timm":
    arch["use_postln"] = any(".norm1_post." in k for k in keys)
  head = {"official": "head.weight", "timm": "head.fc.weight", "hf": "classifier.weight"}[layout]
  arch["num_classes"] = int(state_dict[head].shape[0]) if head in state_dict else 0
  return arch


def _comparable(kwargs: Mapping[str, Any]) -> dict[str, Any]:
  """FocalNet kwargs (with defaults filled in) in the form `infer_architecture` returns."""
  from focalnet_jax.model import FocalNet, per_stage

  kw = {f: getattr(FocalNet, f) for f in ("use_conv_embed", "use_layerscale", "use_postln",
                                          "use_postln_in_modulation", "patch_size", "num_classes")}
  kw.update(kwargs)
  n = len(kw["depths"])
  arch = {
      "embed_dim": kw["embed_dim"],
      "use_conv_embed": kw["use_conv_embed"],
      "depths": tuple(kw["depths"]),
      "focal_levels": per_stage(kw["focal_levels"], n, "focal_levels"),
      "focal_windows": per_stage(kw["focal_windows"], n, "focal_windows"),
      "use_layerscale": kw["use_layerscale"],
      "use_postln_in_modulation": kw["use_postln_in_modulation"],
      "use_postln": kw["use_postln"],
      "num_classes": kw["num_classes"],
  }
  if not arch["use_conv_embed"]:
    arch["patch_size"] = kw["patch_size"]
  return arch


def _differences(arch: Mapping[str, Any], kwargs: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
  """{field: (checkpoint value, model value)} over the fields `arch` could read off the keys."""
  model = _comparable(kwargs)
  return {k: (arch[k], v) for k, v in model.items() if k in arch and arch[k] != v}


def matching_variants(arch: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
  """Published variants whose architecture fits `arch`, with the overrides each would need
  (only num_classes is allowed to differ)."""
  from focalnet_jax.model.variants import list_models, model_kwargs

  found = []
  for name in list_models():
    diff = _differences(arch, model_kwargs(name))
    if set(diff) <= {"num_classes"}:
      found.append((name, {k: got for k, (got, _) in diff.items()}))
  return found


def _describe(arch: Mapping[str, Any], model_name: str, overrides: Mapping[str, Any]) -> str:
  """What, read off the checkpoint's keys, differs from the requested model, and which
  variant would fit; '' when only the head differs (reported on its own)."""
  from focalnet_jax.model.variants import model_kwargs

  diff = _differences(arch, model_kwargs(model_name, **overrides))
  diff.pop("num_classes", None)
  if not diff:
    return ""
  shown = ", ".join(f"{k}={got} (model: {want})" for k, (got, want) in diff.items())
  fits = [n + "".join(f" with {k}={v}" for k, v in o.items()) for n, o in matching_variants(arch)]
  if fits:
    return f"The checkpoint has {shown}: it looks like {' or '.join(fits)}."
  fix = " ".join(f"--override {k}={json.dumps(got, separators=(',', ':'))}" for k, (got, _) in diff.items())
  return f"The checkpoint has {shown}; no published variant matches. Try: {fix}."


def _compact(keys: Sequence[str], limit: int = 12) -> str:
  """Lists keys compactly: indices collapsed to '*' with a count, e.g. 'layers.*.blocks.*.gamma_1 (12)'."""
  groups: dict[str, list[str]] = collections.defaultdict(list)
  for key in sorted(keys):
    groups[re.sub(r"\.\d+(?=\.|$)", ".*", key)].append(key)
  lines = [
      (group[0] if len(group) == 1 else f"{pattern} ({len(group)} keys)") for pattern, group in groups.items()
  ]
  more = f"\n    ... and {len(lines) - limit} more patterns" if len(lines) > limit else ""
  return "\n    " + "\n    ".join(lines[:limit]) + more


# --- conversion ---------------------------------------------------------------------------


def convert_state_dict(
    state_dict: Mapping[str, Any],
    model_name: str,
    *,
    drop_head: bool = False,
    head_to_1k: bool = False,
    head_seed: int = 0,
    **overrides: Any,
) -> dict[str, Any]:
  """Converts a PyTorch FocalNet state dict into `{'params': ...}` for `create_model(model_name,
  **overrides)`, as nested dicts of float32 numpy arrays.

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
  import jax
  import jax.numpy as jnp
  from flax import traverse_util

  from focalnet_jax.model import dense_init
  from focalnet_jax.model.variants import create_model

  if drop_head and head_to_1k:
    raise ValueError("drop_head and head_to_1k exclude each other: drop the head, or cut it to 1K.")
  state_dict = unwrap_state_dict(state_dict)
  layout, prefix = detect_layout(list(state_dict))
  model = create_model(model_name, **overrides)
  side = model.stride
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, side, side, 3), jnp.float32))
  flat = traverse_util.flatten_dict(shapes["params"])
  targets = {p: flat[p] for p in sorted(flat, key=_forward_order)}  # so errors name the stem first
  postln = bool(model.use_postln)
  wanted = {path: torch_key(path, layout, postln=postln, prefix=prefix) for path in targets}

  head_paths = [p for p in targets if p[0] == "head"]
  if head_to_1k:
    _check_head_to_1k(state_dict, layout, model.num_classes)
  used = set(wanted.values())
  if drop_head:
    used |= {k for k in state_dict if _is_head_key(k, layout)}
  missing = sorted(k for p, k in wanted.items() if k not in state_dict and not (drop_head and p[0] == "head"))
  unexpected = sorted(k for k in state_dict if k not in used)

  params, mismatched = {}, []
  for path, key in wanted.items():
    if key not in state_dict or (drop_head and path[0] == "head"):
      continue
    value = state_dict[key]
    expected = tuple(targets[path].shape)
    converted = _to_flax(value, len(expected))
    if head_to_1k and path[0] == "head":
      converted = converted[..., :NUM_CLASSES_1K]
    if converted.shape != expected:
      mismatched.append((key, tuple(value.shape), _torch_shape(expected, value.shape)))
      continue
    params[path] = np.ascontiguousarray(converted, dtype=np.float32)

  if missing or unexpected or mismatched:
    raise ValueError(
        _report(model_name, overrides, layout, state_dict, prefix, missing, unexpected, mismatched, model)
    )

  if drop_head and head_paths:
    kernel_path = ("head", "kernel")
    kernel = dense_init(jax.random.key(head_seed), targets[kernel_path].shape, jnp.float32)
    params[kernel_path] = np.asarray(kernel)
    params[("head", "bias")] = np.zeros(targets[("head", "bias")].shape, np.float32)
  return {"params": traverse_util.unflatten_dict(params)}


def _check_head_to_1k(state_dict: Mapping[str, np.ndarray], layout: str, num_classes: int) -> None:
  key = {"official": "head.weight", "timm": "head.fc.weight", "hf": "classifier.weight"}[layout]
  rows = state_dict[key].shape[0] if key in state_dict else 0
  if num_classes != NUM_CLASSES_1K or rows != NUM_CLASSES_22K:
    raise ValueError(
        f"head_to_1k cuts a {NUM_CLASSES_22K}-class ImageNet-22K head to the {NUM_CLASSES_1K} "
        f"ImageNet-1K classes, but the checkpoint's head ({key!r}) has {rows or 'no'} rows and the "
        f"model has num_classes={num_classes}. Use it only with num_classes={NUM_CLASSES_1K} "
        "(CLI: --override num_classes=1000) on a 22K checkpoint; otherwise keep the head as it "
        "is (num_classes equal to its rows) or drop it (drop_head=True)."
    )


def _report(model_name, overrides, layout, state_dict, prefix, missing, unexpected, mismatched, model) -> str:
  target = model_name + "".join(f", {k}={v}" for k, v in overrides.items())
  lines = [f"The {layout}-layout checkpoint does not fit {target}:"]
  arch = infer_architecture(state_dict, layout, prefix)
  if mismatched:
    lines.append(f"  shape mismatches ({len(mismatched)}; PyTorch layout):")
  for key, got, want in mismatched[:_MAX_MISMATCHES]:
    lines.append(f"    {key!r}: checkpoint has {got}, the model expects {want}")
  if len(mismatched) > _MAX_MISMATCHES:
    lines.append(f"    ... and {len(mismatched) - _MAX_MISMATCHES} more")
  if missing:
    lines.append(f"  missing from the checkpoint ({len(missing)}):" + _compact(missing))
  if unexpected:
    lines.append(f"  unexpected in the checkpoint ({len(unexpected)}):" + _compact(unexpected))
  problems = [k for k, _, _ in mismatched] + missing + unexpected
  if all(_is_head_key(k, layout) for k in problems):  # only the classifier differs
    n = arch["num_classes"]
    has = f"has {n} classes" if n else "has no head"
    new_head = f" and initialise a new {model.num_classes}-class head (for fine-tuning)"
    options = [
        f"num_classes={n} to keep the checkpoint's {n}-class head" if n else
        "num_classes=0 (the checkpoint has no head)",
        "drop_head=True (CLI: --drop-head) to discard it" + (new_head if model.num_classes else ""),
    ]
    if n == NUM_CLASSES_22K and model.num_classes == NUM_CLASSES_1K:
      options.append(
          "head_to_1k=True (CLI: --head-to-1k) to keep the first 1000 rows of the 22K head, "
          "which are the ImageNet-1K classes in the official reordered label map"
      )
    lines.append(
        f"  The checkpoint {has} and the model {model.num_classes} classes. Options: "
        + "; or ".join(options) + "."
    )
  hint = _describe(arch, model_name, overrides)
  if hint:  # the most useful line goes first
    lines.insert(1, "  " + hint)
  return "\n".join(lines)


def num_params(params: Any) -> int:
  """Number of scalars in a pytree of arrays."""
  import jax

  return int(sum(np.size(x) for x in jax.tree.leaves(params)))


# --- CLI ----------------------------------------------------------------------------------


def _parse_override(text: str) -> tuple[str, Any]:
  if "=" not in text:
    raise argparse.ArgumentTypeError(f"--override expects key=value, got {text!r}.")
  key, raw = text.split("=", 1)
  try:
    value = json.loads(raw)  # numbers, true/false, [2, 2, 6, 2]
  except json.JSONDecodeError:
    value = raw  # plain strings such as bfloat16
  return key.strip(), value


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m focalnet_jax.convert",
      description="Convert published PyTorch FocalNet weights (official .pth, timm or HF transformers "
      ".safetensors/.bin) into a focalnet_jax checkpoint directory.",
  )
  parser.add_argument("--model", required=True, help="variant name, e.g. focalnet_tiny_srf")
  parser.add_argument(
      "--checkpoint", required=True, help=".pth/.pt/.bin/.safetensors file, or an HF hub snapshot directory"
  )
  parser.add_argument(
      "--output", required=True, help="checkpoint directory to write (must not exist, or be empty)"
  )
  head = parser.add_mutually_exclusive_group()
  head.add_argument(
      "--drop-head", action="store_true",
      help="discard the checkpoint's classifier; a model with a head gets a freshly initialised one",
  )
  head.add_argument(
      "--head-to-1k", action="store_true",
      help="cut a 21842-class ImageNet-22K head to its first 1000 rows (the ImageNet-1K classes)",
  )
  parser.add_argument(
      "--override", action="append", default=[], type=_parse_override, metavar="KEY=VALUE",
      help="FocalNet field to override, JSON value (e.g. num_classes=1000, depths=[2,2,6,2]); repeatable",
  )
  parser.add_argument("--force", action="store_true", help="replace an existing non-empty output directory")
  parser.add_argument(
      "--trust-pickle", action="store_true",
      help="read .pth files that pickle more than tensors (torch.load weights_only=False); "
      "only for files you trust",
  )
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the CLI; returns 0 on success, exits with a message on any error."""
  args = build_parser().parse_args(argv)
  overrides = dict(args.override)
  output = os.path.abspath(args.output)
  occupied = os.path.exists(output) and (not os.path.isdir(output) or bool(os.listdir(output)))
  if occupied and not args.force:  # checked first, so a refusal costs nothing
    raise SystemExit(
        f"error: {output} already exists and is not empty; refusing to overwrite it. "
        "Choose another --output, or pass --force to replace it."
    )
  try:
    state_dict = load_checkpoint(args.checkpoint, trust_pickle=args.trust_pickle)
    layout, _ = detect_layout(list(state_dict))
    variables = convert_state_dict(
        state_dict, args.model, drop_head=args.drop_head, head_to_1k=args.head_to_1k, **overrides
    )
  except (ValueError, TypeError, FileNotFoundError, ImportError) as e:
    raise SystemExit(f"error: {e}") from e

  from focalnet_jax import checkpoint

  meta = {
      "model": args.model,
      "model_overrides": overrides,
      "source": {
          "path": os.path.abspath(args.checkpoint),
          "layout": layout,
          "drop_head": bool(args.drop_head),
          "head_to_1k": bool(args.head_to_1k),
      },
  }
  if occupied and os.path.isdir(output):  # --force, and only once the conversion has succeeded
    shutil.rmtree(output)
  elif occupied:
    os.remove(output)
  checkpoint.save(output, {"params": variables["params"]}, meta, step=0)
  over = "".join(f" {k}={v}" for k, v in overrides.items())
  print(
      f"Converted {args.checkpoint} ({layout} layout) to {args.model}{over}: "
      f"{num_params(variables['params']):,} parameters.\n"
      f"Wrote {output} (step 0).\n"
      f"Evaluate it:  python eval.py --config configs/<config>.py --checkpoint {output}\n"
      f"Fine-tune it: python train.py --config configs/<config>.py --config.init_from={output} "
      "--workdir runs/<name>"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
