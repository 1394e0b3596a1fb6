r"""Ablation: number of focal levels L = 0..4 (kernel sizes 3, 5, 7, 9 at levels 0..3; L=0 keeps only
the global context). The paper's Table: more levels, larger receptive field, better accuracy.

  python sweep.py --config configs/ablations/focal_levels.py:quickstart --workdir runs/sweep_fl
  python sweep.py --config configs/ablations/focal_levels.py --workdir runs/sweep_fl --print_commands

Quickstart scale: 1-3 minutes per point on 2 CPU cores (measured). ImageNet scale: FocalNet-T's
300-epoch recipe per point. One point alone:
  python train.py --config configs/ablations/focal_levels.py:quickstart --workdir runs/fl3 \
      --config.model.focal_levels=3
"""
from configs.ablations import common


def get_config(arg=None):
  return common.base_config(arg)


def get_sweep(arg=None):
  return common.resolve(arg, [common.point(f"fl{n}", {"model.focal_levels": n}) for n in range(5)])
