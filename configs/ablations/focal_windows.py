r"""Ablation: kernel size of the first focal level (focal_window w; level l uses w + 2l), at L = 2.

  python sweep.py --config configs/ablations/focal_windows.py:quickstart --workdir runs/sweep_fw
  python sweep.py --config configs/ablations/focal_windows.py --workdir runs/sweep_fw --print_commands

Quickstart scale: about 2-5 minutes per point on 2 CPU cores (its stages are 8x8, 4x4 and 2x2
tokens, so windows past 7 only add padding there). ImageNet scale: FocalNet-T's recipe.
"""
from configs.ablations import common


def get_config(arg=None):
  return common.base_config(arg)


def get_sweep(arg=None):
  return common.resolve(arg, [common.point(f"w{w}", {"model.focal_windows": w}) for w in (1, 3, 5, 7)])
