"""A training config checked before anything is compiled or written.

`check_values(config)` checks every field's type and range on its own (a zero batch size,
`keep_checkpoints=0` or a negative learning rate would otherwise crash after a long compile,
delete every checkpoint, or run gradient ascent and exit 0); `check_with_model` checks what
needs the model and the device count; `check_resume` compares a resumed run's config with the
one its checkpoint was written under. Every error names the field, its value and the fix.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any, Callable

import ml_collections

from focalnet_jax.model import Execution, nearest_multiples
from focalnet_jax.model import execution as execution_lib
from focalnet_jax.model.layers import NORM_DTYPES

# config.execution chooses how the model runs, not what it computes: it is passed to the model but
# not recorded as its architecture in checkpoints (a checkpoint evaluated elsewhere runs the
# implementations that machine picks). Its fields are Execution's; config.model keeps the former
# keys of the switches for one release (execution_lib.LEGACY_NAMES).
EXECUTION_KEYS = tuple(f"execution.{name}" for name in execution_lib.field_names())
LEGACY_EXECUTION_KEYS = tuple(f"model.{old}" for old in execution_lib.LEGACY_NAMES)

# Fields a resumed run may change freely: they decide what is logged, saved, evaluated or how
# fast it runs, never the sequence of states the run goes through.
HARMLESS_ON_RESUME = frozenset({
    "log_every_steps", "checkpoint_every_steps", "keep_checkpoints", "async_checkpoints",
    "eval_every_steps", "eval_batch_size", "eval_split", "crop_ratio", "data_threads", "data_dir",
    "nonfinite", "init_from", "allow_config_change", "mesh.data", "mesh.fsdp", "fsdp_min_size",
    "probe.knn_k", "probe.knn_temperature", "probe.linear_holdout", "probe.linear_c", "probe.linear_max_iter",
} | set(EXECUTION_KEYS) | set(LEGACY_EXECUTION_KEYS))


def is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _rule(kind: Callable[[Any], bool], ok: Callable[[Any], bool], need: str):
  return lambda v: None if kind(v) and ok(v) else need


def _int(lo: int, need: str = ""):
  return _rule(is_int, lambda v: v >= lo, need or f"an int >= {lo}")


def _num(ok: Callable[[float], bool], need: str):
  return _rule(_is_number, ok, need)


def _choice(*values: str):
  return lambda v: None if v in values else " or ".join(map(repr, values))


def _optional(rule):
  return lambda v: None if v is None else rule(v)


def _positive_ints(v: Any) -> str | None:
  if isinstance(v, Sequence) and not isinstance(v, str) and v and all(is_int(x) and x > 0 for x in v):
    return None
  return "a non-empty sequence of positive ints, one per stage, e.g. (2, 2, 6, 2)"


def _pair_in_unit(v: Any) -> str | None:
  if (isinstance(v, Sequence) and len(v) == 2 and all(_is_number(x) for x in v)
      and 0 < v[0] <= v[1] <= 1):
    return None
  return "a pair (lo, hi) with 0 < lo <= hi <= 1"


def _positive_pair(v: Any) -> str | None:
  if isinstance(v, Sequence) and len(v) == 2 and all(_is_number(x) and x > 0 for x in v) and v[0] <= v[1]:
    return None
  return "a pair (lo, hi) with 0 < lo <= hi"


def _positive_numbers(v: Any) -> str | None:
  if isinstance(v, Sequence) and not isinstance(v, str) and v and all(_is_number(x) and x > 0 for x in v):
    return None
  return "a non-empty sequence of numbers > 0, e.g. (0.01, 0.1, 1.0)"


def _ints_or_int(ok: Callable[[int], bool], need: str):
  """One int for every stage, or one per stage, each `ok`."""
  def rule(v: Any) -> str | None:
    items = v if isinstance(v, Sequence) and not isinstance(v, str) and v else [v]
    return None if all(is_int(x) and ok(x) for x in items) else need
  return rule


def _triple(ok: Callable[[float], bool], need: str):
  return _rule(lambda v: isinstance(v, Sequence) and not isinstance(v, str) and len(v) == 3
               and all(_is_number(x) for x in v), lambda v: all(ok(x) for x in v), need)


_UNIT = _num(lambda v: 0 <= v <= 1, "a number in [0, 1]")
_BELOW_ONE = _num(lambda v: 0 <= v < 1, "a number in [0, 1)")
_NON_NEGATIVE = _num(lambda v: v >= 0, "a number >= 0")
_POSITIVE = _num(lambda v: v > 0, "a number > 0")
_BOOL = _rule(lambda v: isinstance(v, bool), lambda v: True, "True or False")
_NORM_DTYPE = _rule(lambda v: v is None or v in NORM_DTYPES, lambda v: True,
                    "None (LayerNorms write float32) or " + " or ".join(map(repr, NORM_DTYPES)))

def _switch(name: str):
  """The rule of execution switch `name`: what Execution accepts for it."""
  return lambda v: execution_lib.problem(name, v)


RULES: dict[str, Callable[[Any], str | None]] = {
    "batch_size": _int(1), "eval_batch_size": _int(1), "grad_accum_steps": _int(1),
    "log_every_steps": _int(1), "checkpoint_every_steps": _int(1),
    "keep_checkpoints": _int(1, "an int >= 1 (0 would delete every checkpoint, the final one too)"),
    "eval_every_steps": _int(-1, "an int: > 0 every that many steps, -1 once per epoch, 0 only at the end"),
    "total_steps": _rule(is_int, lambda v: v == -1 or v > 0, "an int > 0, or -1 to use num_epochs"),
    "num_epochs": _num(lambda v: v >= 0, "a number > 0 (or set total_steps > 0)"),
    "base_lr": _num(lambda v: v > 0, "a number > 0 (a negative rate runs gradient ascent)"),
    "warmup_lr": _NON_NEGATIVE, "min_lr": _NON_NEGATIVE, "lr_base_batch_size": _int(1),
    "warmup_epochs": _NON_NEGATIVE, "weight_decay": _NON_NEGATIVE,
    "adam_b1": _BELOW_ONE, "adam_b2": _BELOW_ONE, "adam_eps": _POSITIVE,
    "grad_clip_norm": _NON_NEGATIVE, "ema_decay": _BELOW_ONE, "label_smoothing": _BELOW_ONE,
    "mixup_alpha": _NON_NEGATIVE, "cutmix_alpha": _NON_NEGATIVE, "mixup_prob": _UNIT,
    "mixup_switch_prob": _UNIT, "nonfinite": _choice("stop", "skip"),
    "image_size": _int(1), "crop_ratio": _num(lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "interpolation": _choice("bicubic", "bilinear"), "shuffle_buffer": _int(1),
    "data_threads": _optional(_int(1)), "corrupt_images": _choice("skip", "error"),
    "digits_split_seed": _int(0), "seed": _int(0), "fsdp_min_size": _int(0),
    "mesh.data": _rule(is_int, lambda v: v == -1 or v > 0, "an int > 0, or -1 for the remaining devices"),
    "mesh.fsdp": _rule(is_int, lambda v: v == -1 or v > 0, "an int > 0, or -1 for the remaining devices"), "async_checkpoints": _BOOL, "allow_config_change": _BOOL,
    "dataset": _rule(lambda v: isinstance(v, str) and bool(v), bool, "a non-empty string"),
    "aug.rrc_scale": _pair_in_unit, "aug.rrc_ratio": _positive_pair, "aug.random_erase_prob": _UNIT,
    "aug.randaug_num_ops": _int(0), "aug.randaug_magnitude": _NON_NEGATIVE,
    "aug.randaug_magnitude_std": _NON_NEGATIVE,
    "model.depths": _optional(_positive_ints), "model.embed_dim": _optional(_int(1)),
    "model.patch_size": _optional(_int(1)), "model.num_classes": _optional(_int(1)),
    "model.drop_rate": _optional(_BELOW_ONE), "model.drop_path_rate": _optional(_BELOW_ONE),
    "model.mlp_ratio": _optional(_POSITIVE), "model.norm_dtype": _NORM_DTYPE,
    **{f"execution.{name}": _switch(name) for name in execution_lib.field_names()},
    **{f"model.{old}": _optional(_switch(new)) for old, new in execution_lib.LEGACY_NAMES.items()},
    "optim.layer_decay": _num(lambda v: 0 < v <= 1, "a number in (0, 1] (1.0: no layer-wise lr decay; "
                              "fine-tuning recipes use 0.65-0.9)"),
    "probe.knn_k": _int(1), "probe.knn_temperature": _POSITIVE, "probe.linear_max_iter": _int(1),
    "probe.linear_holdout": _num(lambda v: 0 < v < 1, "a number in (0, 1)"), "probe.linear_c": _positive_numbers,
    "model.name": _rule(lambda v: isinstance(v, str) and bool(v), bool, "a model name such as 'focalnet_tiny_srf'"),
    "model.focal_levels": _optional(_ints_or_int(lambda v: v >= 0, "an int >= 0, or one per stage (0 keeps only "
                                                 "the global context)")),
    "model.focal_windows": _optional(_ints_or_int(lambda v: v > 0 and v % 2 == 1, "a positive odd int such as 3, "
                                                  "or one per stage")),
    "model.focal_factor": _optional(_int(0)), "model.layerscale_value": _optional(_POSITIVE),
    "model.dtype": _choice("float32", "bfloat16", "float16"),
    "model.param_dtype": _choice("float32", "bfloat16"),
    "aug.mean": _triple(lambda v: True, "three numbers, one per RGB channel, on the 0-1 scale (e.g. (0.485, 0.456, 0.406))"),
    "aug.std": _triple(lambda v: v > 0, "three numbers > 0, one per RGB channel (images are divided by them)"),
    "aug.hflip": _BOOL,
    "train_split": _rule(lambda v: isinstance(v, str), lambda v: True, "a split name, or '' for none"),
    "eval_split": _rule(lambda v: isinstance(v, str) and bool(v), bool, "a split name such as 'validation'"),
    "class_names": _optional(_rule(lambda v: isinstance(v, Sequence) and not isinstance(v, str) and bool(v)
                                   and all(isinstance(x, str) for x in v), bool, "a tuple of class names")),
}

# (field, field it may not exceed, why): a schedule whose floor or start lies above its peak climbs.
_NOT_ABOVE = (("min_lr", "base_lr", "the rate would climb after warmup instead of decaying"),
              ("warmup_lr", "base_lr", "warmup would lower the rate instead of raising it"))


def execution_of(config: ml_collections.ConfigDict) -> Execution:
  """`config.execution` as an Execution, with any former key still set (`config.model.depthwise_impl`,
  ...) applied and a FutureWarning naming its new key; a former and a new key set to different
  values is an error."""
  execution = execution_lib.from_mapping(config.execution.to_dict())
  legacy = {old: config.model[old] for old in execution_lib.LEGACY_NAMES if config.model.get(old) is not None}
  default = Execution()
  for old, value in legacy.items():
    new = execution_lib.LEGACY_NAMES[old]
    if getattr(execution, new) not in (getattr(default, new), value):
      raise ValueError(f"model.{old}={value!r} (deprecated) and execution.{new}={getattr(execution, new)!r} "
                       f"disagree; set only --config.execution.{new}.")
  return execution_lib.pop_legacy(legacy, execution, lambda old, new, value: (
      f"--config.model.{old}={value!r} is deprecated and will be removed in the next release; use "
      f"--config.execution.{new}={value!r} instead (docs/execution.md)."))


# Sequence fields whose command-line value ml_collections turns from one number into a 1-tuple.
_SEQUENCE_FLAGS = ("model.depths", "aug.rrc_scale", "aug.rrc_ratio", "aug.mean", "aug.std")


def check_sequence_flags(argv: Sequence[str]) -> None:
  """`--config.model.depths=3` would silently build a one-stage network (ml_collections reads it
  as (3,)): a sequence field given as one bare number is refused, with the syntax for a tuple."""
  for arg in argv:
    for field in _SEQUENCE_FLAGS:
      prefix = f"--config.{field}="
      if arg.startswith(prefix) and not any(c in arg[len(prefix):] for c in ",()[]"):
        value = arg[len(prefix):]
        raise ValueError(
            f"{arg}: {field} takes one value per stage (or a pair), not a single number. Write a tuple, e.g. "
            f"--config.{field}='(2,2,6,2)'" + (f" (or '({value},)' if you meant one item)." if value else "."))


def _get(config: ml_collections.ConfigDict, path: str) -> tuple[bool, Any]:
  node: Any = config
  for part in path.split("."):
    if part not in node:
      return False, None
    node = node[part]
  return True, node


def check_values(config: ml_collections.ConfigDict, flags: dict[str, str] | None = None) -> None:
  """Every field's type and range; raises one ValueError listing each bad field with its fix.
  `flags` {field: flag}: check only these fields, naming a tool's own flag (eval.py's
  `--crop_ratio`) as the fix."""
  problems = []
  for path, rule in RULES.items():
    if flags is not None and path not in flags:
      continue
    present, value = _get(config, path)
    need = rule(value) if present else None
    if need:
      problems.append(f"{path}={value!r} must be {need} ({(flags or {}).get(path, f'--config.{path}')}=...)")
  if flags is not None:
    if problems:
      raise ValueError("Invalid settings: " + "; ".join(problems) + ".")
    return
  for low, high, why in _NOT_ABOVE:
    lo, hi = _get(config, low)[1], _get(config, high)[1]
    if _is_number(lo) and _is_number(hi) and lo > hi:
      problems.append(f"{low}={lo!r} must be <= {high}={hi!r} ({why}) (--config.{low}=...)")
  if _is_number(config.num_epochs) and config.num_epochs <= 0 and config.total_steps == -1:
    problems.append(f"num_epochs={config.num_epochs!r} trains nothing: set num_epochs > 0 or total_steps > 0 "
                    "(to evaluate a checkpoint without training, use eval.py)")
  if problems:
    raise ValueError("Invalid config: " + "; ".join(problems) + ".")


def check_with_model(config: ml_collections.ConfigDict, model, num_devices: int) -> None:
  """What needs the model or the devices: the image size and the batch sizes' divisibility."""
  model.check_image_size(config.image_size, config.image_size)
  for name, b in (("batch_size", config.batch_size), ("eval_batch_size", config.eval_batch_size)):
    unit = num_devices * (config.grad_accum_steps if name == "batch_size" else 1)
    if b % unit:
      raise ValueError(
          f"{name}={b} must be divisible by the {num_devices} mesh devices"
          + (f" x grad_accum_steps={config.grad_accum_steps}" if name == "batch_size" else "")
          + f"; nearest valid values: {', '.join(map(str, nearest_multiples(b, unit)))} (--config.{name}=...)."
      )


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def config_changes(saved: dict, config: ml_collections.ConfigDict) -> list[tuple[str, Any, Any]]:
  """(field, saved value, new value) of each trajectory-changing field that differs. Values are
  compared as JSON (tuples and lists alike); fields the saved config lacks (added to the code
  since) are not changes."""
  old = _flatten(saved)
  new = _flatten(json.loads(config.to_json_best_effort()))
  return [(k, old[k], new[k]) for k in sorted(new)
          if k in old and old[k] != new[k] and k not in HARMLESS_ON_RESUME]


def check_resume(saved: dict | None, config: ml_collections.ConfigDict, workdir: str, step: int,
                 unknown: str = "", earlier: Sequence[int] = ()) -> list[str]:
  """Refuses to resume under a config that changes the run's trajectory, unless
  `config.allow_config_change`; returns the changes (as lines) that were allowed. `saved` None:
  the saved config is unknown (`unknown` says why), and a check that cannot run refuses too."""
  if saved is None:
    if config.allow_config_change:
      return [f"(not compared: {unknown})"]
    path = f"{workdir}/checkpoints/{step}"
    raise ValueError(
        f"Cannot check that {workdir} may be resumed under this config: {unknown}. Resuming unchecked could "
        "continue its run under another batch size, schedule or model. "
        + (f"If step {step} is damaged, move {path} out of the way to resume from step {earlier[-1]}; "
           if earlier else "")
        + "to start a new run, pass another --workdir; to resume anyway, add --config.allow_config_change=True. "
        "Nothing was written.")
  changes = [f"{k}: {old!r} -> {new!r}" for k, old, new in config_changes(saved, config)]
  if changes and not config.allow_config_change:
    raise ValueError(
        f"{workdir} holds a run at step {step} whose checkpoint was written with another config; "
        "resuming would silently continue under a new schedule or model:\n  " + "\n  ".join(changes)
        + "\nTo start a new run with this config, pass another --workdir. To continue this run "
        "deliberately under the new values, add --config.allow_config_change=True. Nothing was written.")
  return changes
