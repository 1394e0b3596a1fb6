r"""FocalNet-T (SRF, 2 focal levels) on ImageNet-1K, the paper's 300-epoch recipe (82.1% top-1).

  python train.py --config configs/focalnet_t.py --workdir runs/focalnet_t \
      --config.data_dir=$TFDS_DATA_DIR

300 epochs = 375,300 steps at batch 1024 (bfloat16; no wall time measured yet). Everything is default.py's.
"""
from configs import default


def get_config(arg=None):
  config = default.get_config(arg)
  config.model.name = "focalnet_tiny_srf"
  return config
