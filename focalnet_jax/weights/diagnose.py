"""What a checkpoint that does not fit tells about itself: its architecture, read off its keys
and shapes, the published variants it fits, and the error message that says so."""
from __future__ import annotations

import collections
import dataclasses
import json
import re
from typing import Any, Mapping, Sequence

from focalnet_jax.data.labels import IMAGENET1K_CLASSES, IMAGENET22K_CLASSES
from focalnet_jax.weights.layouts import Layout, get_layout

_MAX_MISMATCHES = 8  # shape mismatches listed in an error; a wrong variant mismatches hundreds
_BACKBONE_ONLY = ("out_indices", "out_norms", "conv_stem_padding")  # FocalNetBackbone's, not FocalNet's
_COMPARED = ("use_conv_embed", "use_layerscale", "use_postln", "use_postln_in_modulation", "patch_size",
             "num_classes")


@dataclasses.dataclass(frozen=True)
class Problems:
  """Every way a state dict failed to fit a model; keys in the checkpoint's naming."""

  missing: list[str]
  unexpected: list[str]
  mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]  # (key, checkpoint's, expected)

  def __bool__(self) -> bool:
    return bool(self.missing or self.unexpected or self.mismatched)

  def keys(self) -> list[str]:
    """Every key involved in a problem."""
    return [k for k, _, _ in self.mismatched] + self.missing + self.unexpected


def infer_architecture(state_dict: Mapping[str, Any], layout: str | Layout, prefix: str = "") -> dict[str, Any]:
  """The FocalNet kwargs that can be read off a state dict's keys and shapes.

  `use_postln` is only visible where post-norms have their own names (timm's `norm1_post`);
  for the other layouts it is left out.
  """
  table = get_layout(layout)
  arch: dict[str, Any] = {}
  stem = prefix + table.stem_key
  if stem in state_dict:
    out, _, k, _ = state_dict[stem].shape
    arch["embed_dim"] = int(out)
    arch["use_conv_embed"] = k == 7
    if k != 7:
      arch["patch_size"] = int(k)
  arch.update(_stages(state_dict, table, prefix))
  keys = list(state_dict)
  arch["use_layerscale"] = any(k.endswith("." + table.layerscale.format(n=1)) for k in keys)
  ln = f".modulation.{table.modulation_module('ln')}.weight"
  arch["use_postln_in_modulation"] = any(k.endswith(ln) for k in keys)
  if table.post_norm:
    arch["use_postln"] = any(f".{table.post_norm.format(n=1)}." in k for k in keys)
  head = table.head_key()
  arch["num_classes"] = int(state_dict[head].shape[0]) if head in state_dict else 0
  return arch


def _stages(state_dict: Mapping[str, Any], table: Layout, prefix: str) -> dict[str, Any]:
  """depths, focal_levels and (when every stage has a focal conv) focal_windows."""
  blocks: dict[int, set[int]] = collections.defaultdict(set)
  block_re = table.block_pattern(prefix)
  for key in state_dict:
    m = block_re.match(key)
    if m:
      blocks[int(m.group(1))].add(int(m.group(2)))
  if not blocks:
    return {}
  stages = sorted(blocks)
  levels, windows = [], []
  for i in stages:
    block = table.block_module(i, 0, prefix)
    focal_re = re.compile(rf"^{re.escape(block)}\.modulation\.focal_layers\.(\d+)\.0\.weight$")
    focal = sorted(int(m.group(1)) for m in map(focal_re.match, state_dict) if m)
    levels.append(len(focal))
    if focal:
      windows.append(int(state_dict[f"{block}.modulation.focal_layers.0.0.weight"].shape[-1]))
  arch: dict[str, Any] = {"depths": tuple(len(blocks[i]) for i in stages), "focal_levels": tuple(levels)}
  if len(windows) == len(levels):
    arch["focal_windows"] = tuple(windows)
  return arch


def _comparable(kwargs: Mapping[str, Any]) -> dict[str, Any]:
  """FocalNet kwargs (with defaults filled in) in the form `infer_architecture` returns."""
  from focalnet_jax.model import FocalNet, per_stage

  kw = {f: getattr(FocalNet, f) for f in _COMPARED}
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


def matching_variants(arch: Mapping[str, Any], detection: bool = False) -> list[tuple[str, dict[str, Any]]]:
  """Published variants whose architecture fits `arch`, with the overrides each would need
  (only num_classes is allowed to differ); `detection` applies the detection backbones'
  settings (focal window 9) to every variant first."""
  from focalnet_jax.model.variants import list_models, model_kwargs

  found = []
  for name in list_models():
    diff = _differences(arch, model_kwargs(name, **_detection_settings(detection)))
    if set(diff) <= {"num_classes"}:
      found.append((name, {k: got for k, (got, _) in diff.items()}))
  return found


def _detection_settings(detection: bool) -> dict[str, Any]:
  """The FocalNet fields the detection settings change (conv_stem_padding is the backbone's own)."""
  from focalnet_jax.model.backbone import DETECTION_SETTINGS

  return {k: v for k, v in DETECTION_SETTINGS.items() if k != "conv_stem_padding"} if detection else {}


def describe(arch: Mapping[str, Any], model_name: str, overrides: Mapping[str, Any],
             backbone: Mapping[str, Any] | None = None) -> str:
  """What, read off the checkpoint's keys, differs from the requested model, and which
  variant would fit; '' when only the head differs (reported on its own). `backbone`: the
  target backbone's settings (`out_indices`, `out_norms`, `detection`), None for a classifier."""
  from focalnet_jax.model.variants import model_kwargs

  detection = bool(backbone and backbone.get("detection"))
  fields = {k: v for k, v in overrides.items() if k not in _BACKBONE_ONLY}
  diff = _differences(arch, model_kwargs(model_name, **{**_detection_settings(detection), **fields}))
  diff.pop("num_classes", None)
  if not diff:
    return ""
  shown = ", ".join(f"{k}={got} (model: {want})" for k, (got, want) in diff.items())
  if backbone is not None and not detection:
    as_detector = _differences(arch, model_kwargs(model_name, **{**_detection_settings(True), **fields}))
    if set(as_detector) <= {"num_classes"}:
      return (f"The checkpoint has {shown}: it is the detection backbone of {model_name}, with the official "
              "detection settings (focal window 9: kernels 9, 11, 13); convert with detection=True (CLI: --detection).")
  fits = [n + "".join(f" with {k}={v}" for k, v in o.items()) for n, o in matching_variants(arch, detection)]
  if fits:
    return f"The checkpoint has {shown}: it looks like {' or '.join(fits)}."
  # In the --override syntax of every tool (focalnet_jax.tools.cli): JSON values.
  fix = " ".join(f"--override {k}={json.dumps(got, separators=(',', ':'))}" for k, (got, _) in diff.items())
  return f"The checkpoint has {shown}; no published variant matches. Try: {fix}."


def compact(keys: Sequence[str], limit: int = 12) -> str:
  """Lists keys compactly: indices collapsed to '*' with a count, e.g. 'layers.*.blocks.*.gamma_1 (12 keys)'."""
  groups: dict[str, list[str]] = collections.defaultdict(list)
  for key in sorted(keys):
    groups[re.sub(r"\.\d+(?=\.|$)", ".*", key)].append(key)
  lines = [
      (group[0] if len(group) == 1 else f"{pattern} ({len(group)} keys)") for pattern, group in groups.items()
  ]
  more = f"\n    ... and {len(lines) - limit} more patterns" if len(lines) > limit else ""
  return "\n    " + "\n    ".join(lines[:limit]) + more


def report(problems: Problems, state_dict: Mapping[str, Any], layout: str, prefix: str, model_name: str,
           overrides: Mapping[str, Any], num_classes: int, *, backbone: Mapping[str, Any] | None = None) -> str:
  """The error message for a state dict that does not fit `model_name` with `overrides` (as a
  backbone with the settings `backbone`, if given: `out_indices`, `out_norms`, `detection`)."""
  table = get_layout(layout)
  target = model_name + "".join(f", {k}={v}" for k, v in overrides.items())
  if backbone is not None:
    target = f"a backbone of {target}" + "".join(f", {k}={v}" for k, v in backbone.items() if k not in overrides)
  where = f" (under {prefix!r})" if prefix else ""
  lines = [f"The {table.name}-layout checkpoint{where} does not fit {target}:"]
  arch = infer_architecture(state_dict, table, prefix)
  mismatched = problems.mismatched
  if mismatched:
    lines.append(f"  shape mismatches ({len(mismatched)}; PyTorch layout):")
  for key, got, want in mismatched[:_MAX_MISMATCHES]:
    lines.append(f"    {key!r}: checkpoint has {got}, the model expects {want}")
  if len(mismatched) > _MAX_MISMATCHES:
    lines.append(f"    ... and {len(mismatched) - _MAX_MISMATCHES} more")
  if problems.missing:
    lines.append(f"  missing from the checkpoint ({len(problems.missing)}):" + compact(problems.missing))
  if problems.unexpected:
    lines.append(f"  unexpected in the checkpoint ({len(problems.unexpected)}):" + compact(problems.unexpected))
  if backbone is not None:
    lines.extend(_backbone_hints(problems, table, prefix))
  elif all(table.is_head_key(k) for k in problems.keys()):  # only the classifier differs
    lines.append(_head_options(arch["num_classes"], num_classes))
  hint = describe(arch, model_name, overrides, backbone)
  if hint:  # the most useful line goes first
    lines.insert(1, "  " + hint)
  return "\n".join(lines)


def _backbone_hints(problems: Problems, table: Layout, prefix: str) -> list[str]:
  """What a backbone conversion's missing keys usually mean."""
  norm = table.output_norm_pattern(prefix)
  if not any(norm.match(k) for k in problems.missing):
    return []
  return ["  The checkpoint has no per-output norms for every output (only official detection checkpoints have "
          "norm0..norm3; classifiers, timm and HF FocalNetBackbone have none): convert with out_norms=False "
          "(CLI: --no-out-norms), or choose out_indices among the norms it has."]


def _head_options(rows: int, num_classes: int) -> str:
  """The ways to fit a checkpoint whose head has `rows` classes to a `num_classes` model."""
  has = f"has {rows} classes" if rows else "has no head"
  new_head = f" and initialise a new {num_classes}-class head (for fine-tuning)"
  options = [
      f"num_classes={rows} to keep the checkpoint's {rows}-class head" if rows else
      "num_classes=0 (the checkpoint has no head)",
      "drop_head=True (CLI: --drop-head) to discard it" + (new_head if num_classes else ""),
  ]
  if rows == IMAGENET22K_CLASSES and num_classes == IMAGENET1K_CLASSES:
    options.append(
        f"head_to_1k=True (CLI: --head-to-1k) to keep the first {IMAGENET1K_CLASSES} rows of the 22K head, "
        "which are the ImageNet-1K classes in the official reordered label map"
    )
  return f"  The checkpoint {has} and the model {num_classes} classes. Options: " + "; or ".join(options) + "."
