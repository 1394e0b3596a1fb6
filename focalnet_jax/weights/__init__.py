"""Published FocalNet weights: reading them, converting them into our Flax params, and loading
them (or a focalnet_jax checkpoint) in one call.

The modules follow the data: `reading` (a file -> a flat state dict), `layouts` (which key each
parameter comes from: official microsoft/FocalNet `.pth`, timm and HF transformers, detected from
the keys), `to_flax` (the state dict -> our params), `diagnose` (what a checkpoint that does not
fit looks like), and `pretrained` (`from_pretrained`: a weight file, a snapshot directory, a hub
id or a focalnet_jax checkpoint -> model, variables and their eval preprocessing and class names).

  model, variables = focalnet_jax.from_pretrained("timm/focalnet_tiny_srf.ms_in1k")
  variables = convert_state_dict(state_dict, "focalnet_tiny_srf")  # -> {'params': ...}, numpy float32

`backbone=True` (with `detection`, `out_indices`, `out_norms`) targets a `FocalNetBackbone`, e.g.
from an official mmdet detection checkpoint (keys under `backbone.`). Only reading `.pth`/`.bin`
files needs torch; numpy state dicts and `.safetensors` files convert without it. The command
line that writes a converted checkpoint is `python -m focalnet_jax.tools.convert`.
"""
from focalnet_jax.weights.diagnose import infer_architecture, matching_variants
from focalnet_jax.weights.layouts import LAYOUTS, Layout, detect_layout, torch_key
from focalnet_jax.weights.pretrained import Pretrained, PretrainedInfo, from_pretrained, is_hub_id, is_published
from focalnet_jax.weights.reading import load_checkpoint, unwrap_state_dict
from focalnet_jax.weights.to_flax import adapt_params, backbone_conversion, convert_state_dict, split_backbone

__all__ = [
    "LAYOUTS", "Layout", "Pretrained", "PretrainedInfo", "adapt_params", "backbone_conversion", "convert_state_dict",
    "detect_layout", "from_pretrained", "infer_architecture", "is_hub_id", "is_published", "load_checkpoint",
    "matching_variants", "split_backbone", "torch_key", "unwrap_state_dict",
]
