r"""Ablation: post-LN blocks and layerscale (the large models' stabilisers), alone and together,
and LayerNorm inside the modulation (use_postln_in_modulation, as FocalNet-B iso and H use).

  python sweep.py --config configs/ablations/postln_layerscale.py:quickstart --workdir runs/sweep_ln
  python sweep.py --config configs/ablations/postln_layerscale.py --workdir runs/sweep_ln --print_commands

Quickstart scale: about 2-5 minutes per point on 2 CPU cores. ImageNet scale: FocalNet-T's recipe.
"""
from configs.ablations import common


def get_config(arg=None):
  return common.base_config(arg)


def get_sweep(arg=None):
  return common.resolve(arg, [
      common.point("preln", {}),
      common.point("postln", {"model.use_postln": True}),
      common.point("layerscale", {"model.use_layerscale": True}),
      common.point("postln_layerscale", {"model.use_postln": True, "model.use_layerscale": True}),
      common.point("postln_in_modulation", {"model.use_postln_in_modulation": True}),
  ])
