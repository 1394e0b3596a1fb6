r"""FocalNet-T (SRF, 2 focal levels) on ImageNet-1K, the paper's 300-epoch recipe (82.1% top-1).

  python train.py --config configs/focalnet_t.py --workdir runs/focalnet_t \
      --config.data_dir=$TFDS_DATA_DIR

The headline recipe under its own name: exactly `configs/default.py:focalnet_tiny_srf`. The other
eight ImageNet-1K variants are `configs/default.py:VARIANT` (e.g. `:focalnet_base_lrf`).
"""
from configs import default


def get_config(arg=None):
  del arg
  return default.get_config("focalnet_tiny_srf")
