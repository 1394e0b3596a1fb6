r"""Fine-tune the 22K-pretrained FocalNet-Large (FL4) on ImageNet-1K at 384 px.

  python train.py --config configs/focalnet_l_fl4_ft.py --workdir runs/l_fl4_ft \
      --config.init_from=weights/focalnet_large_fl4 --config.data_dir=$TFDS_DATA_DIR

30 epochs (no wall time measured yet). `init_from` is a checkpoint written by
`python -m focalnet_jax.convert` from the 22K weights; the recipe is in finetune.py.
"""
from configs import finetune


def get_config(arg=None):
  del arg
  return finetune.get_config("focalnet_large_fl4")
