r"""Fine-tune the 22K-pretrained FocalNet-Xlarge (FL3) on ImageNet-1K at 384 px.

  python train.py --config configs/focalnet_xl_fl3_ft.py --workdir runs/xl_fl3_ft \
      --config.init_from=weights/focalnet_xlarge_fl3 --config.data_dir=$TFDS_DATA_DIR

30 epochs (no wall time measured yet). `init_from` is a checkpoint written by
`python -m focalnet_jax.convert` from the 22K weights; the recipe is in finetune.py.
"""
from configs import finetune


def get_config(arg=None):
  del arg
  return finetune.get_config("focalnet_xlarge_fl3")
