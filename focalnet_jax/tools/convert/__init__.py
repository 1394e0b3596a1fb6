"""Converts published PyTorch FocalNet weights into our Flax params.

The same weights are published in three key layouts (official microsoft/FocalNet `.pth`, timm
and HF transformers; one table each in `layouts`), detected from the keys. The modules follow the
data: `reading` (a file -> a flat state dict), `layouts` (which key each parameter comes from),
`to_flax` (the state dict -> our params), `diagnose` (what a checkpoint that does not fit looks
like) and `command` (the command line).

Library: `convert_state_dict(state_dict, 'focalnet_tiny_srf')` -> `{'params': ...}` (numpy
float32); `backbone=True` (with `detection`, `out_indices`, `out_norms`) targets a
`FocalNetBackbone`, e.g. from an official mmdet detection checkpoint (keys under `backbone.`). Only reading `.pth`/`.bin` files needs torch; numpy state dicts and `.safetensors`
files convert without it.

CLI (writes an orbax checkpoint that `focalnet_jax.checkpoint.load_params` reads):
  python -m focalnet_jax.convert --model focalnet_tiny_srf \
      --checkpoint focalnet_tiny_srf.pth --output weights/focalnet_tiny_srf
  python -m focalnet_jax.convert --model focalnet_tiny_lrf --backbone --detection \
      --checkpoint maskrcnn_focalnet_tiny_lrf.pth --output weights/focalnet_tiny_lrf_coco_backbone
"""
from focalnet_jax.tools.convert.command import build_parser, main
from focalnet_jax.tools.convert.diagnose import infer_architecture, matching_variants
from focalnet_jax.tools.convert.layouts import LAYOUTS, Layout, detect_layout, torch_key
from focalnet_jax.tools.convert.reading import load_checkpoint, unwrap_state_dict
from focalnet_jax.tools.convert.to_flax import adapt_params, backbone_conversion, convert_state_dict, split_backbone

__all__ = [
    "LAYOUTS", "Layout", "adapt_params", "backbone_conversion", "build_parser", "convert_state_dict", "detect_layout", "infer_architecture",
    "load_checkpoint", "main", "matching_variants", "split_backbone", "torch_key", "unwrap_state_dict",
]
