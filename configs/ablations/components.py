r"""Ablation of the modulation's parts: without the global context, without gating (a plain sum
of the levels), and an additive instead of multiplicative interaction (q + modulator).

  python sweep.py --config configs/ablations/components.py:quickstart --workdir runs/sweep_comp
  python sweep.py --config configs/ablations/components.py --workdir runs/sweep_comp --print_commands

Quickstart scale: about 2-5 minutes per point on 2 CPU cores. ImageNet scale: FocalNet-T's recipe.
"""
from configs.ablations import common


def get_config(arg=None):
  return common.base_config(arg)


def get_sweep(arg=None):
  return common.resolve(arg, [
      common.point("baseline", {}),
      common.point("no_global_context", {"model.use_global_context": False}),
      common.point("no_gating", {"model.use_gating": False}),
      common.point("additive", {"model.interaction": "add"}),
  ])
