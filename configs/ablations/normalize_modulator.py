r"""Ablation: dividing the summed context by L + 1 (normalize_modulator), at L = 2 and L = 4
(the official FocalNet-L FL4 config turns it on).

  python sweep.py --config configs/ablations/normalize_modulator.py:quickstart --workdir runs/sweep_nm
  python sweep.py --config configs/ablations/normalize_modulator.py --workdir runs/sweep_nm --print_commands

Quickstart scale: about 2-5 minutes per point on 2 CPU cores. ImageNet scale: FocalNet-T's recipe.
"""
from configs.ablations import common


def get_config(arg=None):
  return common.base_config(arg)


def get_sweep(arg=None):
  return common.resolve(arg, [
      common.point(f"fl{levels}_{'norm' if norm else 'sum'}",
                   {"model.focal_levels": levels, "model.normalize_modulator": norm})
      for levels in (2, 4) for norm in (False, True)
  ])
