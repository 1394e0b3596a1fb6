r"""FocalNet-S (SRF) on ImageNet-1K, the paper's 300-epoch recipe (83.4% top-1).

  python train.py --config configs/focalnet_s.py --workdir runs/focalnet_s \
      --config.data_dir=$TFDS_DATA_DIR

300 epochs = 375,300 steps at batch 1024 (bfloat16; no wall time measured yet). Only the variant differs from default.py
(its drop-path rate comes with the variant).
"""
from configs import default


def get_config(arg=None):
  config = default.get_config(arg)
  config.model.name = "focalnet_small_srf"
  return config
