"""The converter's command line: a published weight file -> a focalnet_jax checkpoint directory
(an orbax checkpoint that `focalnet_jax.from_pretrained` and eval.py read). Reading and converting
the weights is library code: `focalnet_jax.weights`.

  python -m focalnet_jax.tools.convert --model focalnet_tiny_srf \
      --checkpoint focalnet_tiny_srf.pth --output weights/focalnet_tiny_srf
  python -m focalnet_jax.tools.convert --model focalnet_tiny_lrf --backbone --detection \
      --checkpoint maskrcnn_focalnet_tiny_lrf.pth --output weights/focalnet_tiny_lrf_coco_backbone
"""
from focalnet_jax.tools.convert.command import build_parser, main

__all__ = ["build_parser", "main"]
