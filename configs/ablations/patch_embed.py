r"""Ablation: overlapped (convolutional) patch embedding and downsampling vs plain, non-overlapping
ones (use_conv_embed: a 7x7 stride-4 stem and 3x3 stride-2 downsamples).

  python sweep.py --config configs/ablations/patch_embed.py:quickstart --workdir runs/sweep_pe
  python sweep.py --config configs/ablations/patch_embed.py --workdir runs/sweep_pe --print_commands

Quickstart scale: about 2-5 minutes per point on 2 CPU cores (the quickstart's stem has patch
size 2, so the conv stem is 7x7 with stride 2 there). ImageNet scale: FocalNet-T's recipe.
"""
from configs.ablations import common


def get_config(arg=None):
  return common.base_config(arg)


def get_sweep(arg=None):
  return common.resolve(arg, [
      common.point("plain", {"model.use_conv_embed": False}),
      common.point("conv_embed", {"model.use_conv_embed": True}),
  ])
