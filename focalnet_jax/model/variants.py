"""The 15 published FocalNet variants and `create_model`.

Values are those of the official configs; docs/model.md, "The 15 variants", tabulates them with
their parameter counts and GFLOPs.
"""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from focalnet_jax.model.network import FocalNet  # not the package: its __init__ imports this module
from focalnet_jax.model import execution as execution_lib

_HIERARCHICAL_T = dict(embed_dim=96, depths=(2, 2, 6, 2), drop_path_rate=0.2)
_HIERARCHICAL_S = dict(embed_dim=96, depths=(2, 2, 18, 2), drop_path_rate=0.3)
_HIERARCHICAL_B = dict(embed_dim=128, depths=(2, 2, 18, 2), drop_path_rate=0.5)
_SRF = dict(focal_levels=2, focal_windows=3)
_LRF = dict(focal_levels=3, focal_windows=3)
_ISO = dict(depths=(12,), patch_size=16, focal_levels=3, focal_windows=3, drop_path_rate=0.2)
# The 22K-pretrained large models: conv embedding, layerscale, post-norm blocks.
_BIG = dict(
    depths=(2, 2, 18, 2),
    use_conv_embed=True,
    use_layerscale=True,
    use_postln=True,
    drop_path_rate=0.5,
    num_classes=21842,
)
_FL3_K5 = dict(focal_levels=3, focal_windows=5)
_FL4_K3 = dict(focal_levels=4, focal_windows=3)

# name -> (architecture kwargs, default image size)
VARIANTS: dict[str, tuple[dict[str, Any], int]] = {
    "focalnet_tiny_srf": ({**_HIERARCHICAL_T, **_SRF}, 224),
    "focalnet_tiny_lrf": ({**_HIERARCHICAL_T, **_LRF}, 224),
    "focalnet_small_srf": ({**_HIERARCHICAL_S, **_SRF}, 224),
    "focalnet_small_lrf": ({**_HIERARCHICAL_S, **_LRF}, 224),
    "focalnet_base_srf": ({**_HIERARCHICAL_B, **_SRF}, 224),
    "focalnet_base_lrf": ({**_HIERARCHICAL_B, **_LRF}, 224),
    "focalnet_tiny_iso": ({**_ISO, "embed_dim": 192}, 224),
    "focalnet_small_iso": ({**_ISO, "embed_dim": 384}, 224),
    "focalnet_base_iso": (
        {**_ISO, "embed_dim": 768, "use_layerscale": True, "use_postln_in_modulation": True},
        224,
    ),
    "focalnet_large_fl3": ({**_BIG, **_FL3_K5, "embed_dim": 192}, 384),
    # The official large_fl4 YAML sets normalize_modulator=True; timm and HF do not. It has no
    # parameters; we follow timm/HF (False) so their weights reproduce their logits.
    "focalnet_large_fl4": ({**_BIG, **_FL4_K3, "embed_dim": 192}, 384),
    "focalnet_xlarge_fl3": ({**_BIG, **_FL3_K5, "embed_dim": 256}, 384),
    "focalnet_xlarge_fl4": ({**_BIG, **_FL4_K3, "embed_dim": 256}, 384),
    "focalnet_huge_fl3": (
        {**_BIG, "focal_levels": 3, "focal_windows": 3, "embed_dim": 352, "use_postln_in_modulation": True},
        224,
    ),
    "focalnet_huge_fl4": (
        {**_BIG, **_FL4_K3, "embed_dim": 352, "use_postln_in_modulation": True},
        224,
    ),
}

_FIELDS = tuple(f for f in FocalNet.__dataclass_fields__ if f not in ("parent", "name"))


def list_models() -> list[str]:
  """Names of all published variants, in the order of the paper's tables."""
  return list(VARIANTS)


def model_kwargs(name: str, **overrides: Any) -> dict[str, Any]:
  """The architecture of variant `name` with `overrides` applied, as FocalNet kwargs."""
  if name not in VARIANTS:
    import difflib

    close = difflib.get_close_matches(name, VARIANTS, n=3)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    raise ValueError(f"Unknown FocalNet variant {name!r}.{hint} Known: {', '.join(VARIANTS)}.")
  overrides = dict(overrides)
  execution = execution_lib.take(overrides, "create_model", stacklevel=4)  # create_model's caller
  unknown = sorted(set(overrides) - set(_FIELDS))
  if unknown:
    raise TypeError(f"Unknown FocalNet field(s) {unknown}; valid fields: {', '.join(_FIELDS)}.")
  kwargs = dict(VARIANTS[name][0])
  kwargs.update(overrides, execution=execution)
  if isinstance(kwargs.get("depths"), list):
    kwargs["depths"] = tuple(kwargs["depths"])
  for key in ("focal_levels", "focal_windows"):
    if isinstance(kwargs.get(key), list):
      kwargs[key] = tuple(kwargs[key])
  for key in ("dtype", "param_dtype"):  # configs and checkpoint metadata carry dtype names
    if isinstance(kwargs.get(key), str):
      kwargs[key] = jnp.dtype(kwargs[key])
  return kwargs


def default_image_size(name: str) -> int:
  """The resolution the variant was trained (or pretrained) at."""
  model_kwargs(name)  # validates the name
  return VARIANTS[name][1]


def create_model(name: str, **overrides: Any) -> FocalNet:
  """Builds variant `name`; any FocalNet field can be overridden.

  Example: `create_model('focalnet_tiny_srf', num_classes=10, dtype=jnp.bfloat16,
  execution=Execution(depthwise='xla'))`; `execution` may also be a dict of its fields. The former
  execution fields (`depthwise_impl=`, `focal_context_impl=`, `remat=`, `f_align=`) still work for
  one release, with a FutureWarning.
  """
  return FocalNet(**model_kwargs(name, **overrides))
