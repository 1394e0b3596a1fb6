"""The checks of a FocalNet's field values, run when the model is built: every error names the
field, its value and the fix. Also the per-stage broadcast and the nearest valid sizes they use.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from focalnet_jax.model.execution import Execution

if TYPE_CHECKING:
  from focalnet_jax.model.network import FocalNet

IntOrSeq = int | Sequence[int]


def per_stage(value: IntOrSeq, num_stages: int, field: str) -> tuple[int, ...]:
  """Broadcasts an int to one value per stage; checks a sequence has one per stage."""
  if isinstance(value, (int, np.integer)):
    return (int(value),) * num_stages
  value = tuple(int(v) for v in value)
  if len(value) != num_stages:
    raise ValueError(
        f"{field}={value} has {len(value)} entries but the model has {num_stages} stages "
        f"(depths has {num_stages} entries); give one value per stage or a single int."
    )
  return value


def nearest_multiples(value: int, unit: int) -> list[int]:
  """The multiples of `unit` just below and just above `value` (one if `value` is one), at least `unit`.

  The "nearest valid values" offered when a size must be a multiple of `unit`, e.g.
  `nearest_multiples(100, 32) == [96, 128]`, `nearest_multiples(16, 32) == [32]`.
  """
  return sorted({max(unit, value // unit * unit), max(unit, -(-value // unit) * unit)})


def validate(model: FocalNet) -> None:
  """Raises ValueError naming the field and the fix for any invalid architecture value."""
  # A string such as 'false' is truthy: a switch given one would silently build the other model.
  for name, field in type(model).__dataclass_fields__.items():
    value = getattr(model, name)
    if isinstance(field.default, bool) and not isinstance(value, (bool, np.bool_)):
      raise ValueError(f"{name}={value!r} must be True or False (a {type(value).__name__} was given).")
  if isinstance(model.depths, (int, str)) or not all(isinstance(d, (int, np.integer)) for d in model.depths):
    raise ValueError(f"depths={model.depths!r} must be a sequence of ints, one per stage, e.g. (2, 2, 6, 2).")
  depths = tuple(model.depths)
  if not depths or any(int(d) < 1 for d in depths):
    raise ValueError(f"depths={depths} must be a non-empty sequence of positive ints.")
  n = len(depths)
  levels = per_stage(model.focal_levels, n, "focal_levels")
  windows = per_stage(model.focal_windows, n, "focal_windows")
  if any(l < 0 for l in levels):
    raise ValueError(f"focal_levels={levels} must be >= 0 (0 keeps only the global context).")
  if any(w < 1 or w % 2 == 0 for w in windows):
    raise ValueError(
        f"focal_windows={windows}: every focal window (the first level's kernel size) must be a "
        "positive odd int such as 3 or 5, so that 'same' padding of k // 2 keeps the map size."
    )
  if model.focal_factor < 0 or model.focal_factor % 2:
    raise ValueError(
        f"focal_factor={model.focal_factor} must be a non-negative even int (kernel sizes "
        "focal_window + focal_factor * l must stay odd)."
    )
  for name in ("embed_dim", "patch_size"):
    if int(getattr(model, name)) < 1:
      raise ValueError(f"{name}={getattr(model, name)} must be a positive int.")
  if model.num_classes < 0:
    raise ValueError(f"num_classes={model.num_classes} must be >= 0 (0 returns pooled features).")
  if not 0.0 <= model.drop_path_rate < 1.0 or not 0.0 <= model.drop_rate < 1.0:
    raise ValueError(
        f"drop_path_rate={model.drop_path_rate} and drop_rate={model.drop_rate} must lie in [0, 1)."
    )
  if model.mlp_ratio <= 0:
    raise ValueError(f"mlp_ratio={model.mlp_ratio} must be positive.")
  if not isinstance(model.execution, Execution):
    raise TypeError(f"execution={model.execution!r} must be a focalnet_jax.model.Execution, e.g. "
                    "Execution(depthwise='xla') (create_model also takes a dict of its fields).")
  if model.interaction not in ("multiply", "add"):
    raise ValueError(f"interaction={model.interaction!r} must be 'multiply' or 'add'.")
  if not model.use_global_context and min(levels) == 0:
    raise ValueError(
        "use_global_context=False with focal_levels=0 leaves no context at all; use at least one "
        "focal level or keep the global context."
    )
