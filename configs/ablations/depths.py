r"""Ablation: deeper and deeper-thinner layouts against FocalNet-T's (2, 2, 6, 2) x 96.

  python sweep.py --config configs/ablations/depths.py:quickstart --workdir runs/sweep_depth
  python sweep.py --config configs/ablations/depths.py --workdir runs/sweep_depth --print_commands

ImageNet scale: (2, 2, 18, 2) x 96 (FocalNet-S's layout), (3, 3, 16, 3) x 96, and (3, 3, 16, 3)
x 64 (deeper and thinner: fewer parameters than S). The quickstart's network has 3 stages,
(1, 2, 1) x 32, so its points are the same moves scaled down: deepen the middle stage, spread the
depth over all stages, then thin the width. About 2-6 minutes per point on 2 CPU cores.
"""
from configs.ablations import common


def get_config(arg=None):
  return common.base_config(arg)


def get_sweep(arg=None):
  return common.resolve(arg, [
      common.point("baseline", {}),
      common.point("deeper", {"model.depths": (2, 2, 18, 2)}, quickstart={"model.depths": (1, 4, 1)}),
      common.point("deeper_spread", {"model.depths": (3, 3, 16, 3)}, quickstart={"model.depths": (2, 3, 2)}),
      common.point("deeper_thinner", {"model.depths": (3, 3, 16, 3), "model.embed_dim": 64},
                   quickstart={"model.depths": (2, 3, 2), "model.embed_dim": 24}),
  ])
