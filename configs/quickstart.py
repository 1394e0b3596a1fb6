r"""Quickstart: a small FocalNet on scikit-learn's handwritten digits, on a laptop CPU.

  python train.py --config configs/quickstart.py --workdir runs/quickstart

About 2 minutes on 2 idle CPU cores (5 on busy ones); reaches 99.2% test top-1 (seed 0).
The 1,797 8x8 digit images are written once as an image folder under
`<data_dir>/digits` (by default `<workdir>/data`; 80/20 train/test split fixed by
`digits_split_seed`) and read through the same input pipeline as ImageNet.
Same trainer, same recipe machinery as the ImageNet configs; only the sizes shrink:
a 3-stage FocalNet with 32 channels on 16x16 inputs (patch 2: an 8x8 token grid,
one token per original pixel), no mixup, light augmentation.
"""
from configs import default


def get_config(arg=None):
  del arg  # one scale: no variants
  config = default.get_config()
  config.model.name = "focalnet_tiny_srf"
  config.model.embed_dim = 32
  config.model.depths = (1, 2, 1)
  config.model.patch_size = 2
  config.model.drop_path_rate = 0.05
  config.model.dtype = "float32"  # bfloat16 is slow on most CPUs

  config.dataset = "digits"
  config.train_split = "train"
  config.eval_split = "test"
  config.image_size = 16
  config.crop_ratio = 1.0
  config.interpolation = "bilinear"
  config.batch_size = 64
  config.eval_batch_size = 128
  config.shuffle_buffer = 2048
  config.aug.rrc_scale = (0.6, 1.0)
  config.aug.rrc_ratio = (0.8, 1.25)
  config.aug.hflip = False  # a mirrored digit is another symbol
  config.aug.randaug_num_ops = 0
  config.aug.random_erase_prob = 0.0

  config.mixup_alpha = 0.0
  config.cutmix_alpha = 0.0
  config.label_smoothing = 0.1
  config.num_epochs = 30
  config.warmup_epochs = 2.0
  config.base_lr = 8e-3  # x 64/512 = 1e-3 peak
  config.warmup_lr = 8e-6
  config.min_lr = 8e-5

  config.log_every_steps = 22  # about once per epoch (1,437 train images / 64)
  config.eval_every_steps = 110
  config.checkpoint_every_steps = 220
  config.keep_checkpoints = 1
  return config
