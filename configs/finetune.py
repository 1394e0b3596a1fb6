r"""Fine-tune a 22K-pretrained FocalNet (large/xlarge/huge) on ImageNet-1K.

  python -m focalnet_jax.tools.convert --model focalnet_large_fl3 --checkpoint model.safetensors \
      --output weights/focalnet_large_fl3_22k --head-to-1k --override num_classes=1000
  python train.py --config configs/finetune.py:focalnet_large_fl3 --workdir runs/l3_ft \
      --config.init_from=weights/focalnet_large_fl3_22k --config.data_dir=$TFDS_DATA_DIR

30 epochs at the pretraining resolution (no wall time measured yet). `:VARIANT` picks the
model: focalnet_{large,xlarge,huge}_fl{3,4}.

The official repository releases no fine-tuning recipe for these models, so the values are
ours, following the usual 22K -> 1K practice of Swin/FocalNet-style models: 30 epochs, peak lr
2e-5 x batch/512 with 5 warmup epochs, weight decay 1e-8, drop path 0.2, the 1K recipe's
mixup/cutmix/label smoothing, and EMA of the weights. Converting with `--head-to-1k` keeps
the 22K head's rows of the 1000 ImageNet-1K classes (the official 22K label map lists them
first); a checkpoint converted with its 21842-class head instead gets a freshly initialised
1000-class head (the trainer says so).
Parameters are sharded over all devices (FSDP) and blocks rematerialised to fit memory.

Layer-wise lr decay (BEiT / ConvNeXt-style fine-tuning; timm's --layer-decay) is off here
(config.optim.layer_decay = 1.0). To fine-tune with it, the stem at lr x 0.8^(L-1) and each
block above it one factor 0.8 closer to the head's full rate (timm's FocalNet layer groups;
focalnet_jax.train.layer_decay), add
      --config.optim.layer_decay=0.8
to the train.py command above. 0.8 is untuned (BEiT-style recipes use 0.65-0.9); no run of it
has been measured here.
"""
from configs import default

# variant -> fine-tuning resolution (the resolution it was pretrained at)
IMAGE_SIZE = {
    "focalnet_large_fl3": 384,
    "focalnet_large_fl4": 384,
    "focalnet_xlarge_fl3": 384,
    "focalnet_xlarge_fl4": 384,
    "focalnet_huge_fl3": 224,
    "focalnet_huge_fl4": 224,
}


def get_config(arg: str | None = "focalnet_large_fl3"):
  """`arg`: the variant name (one of IMAGE_SIZE)."""
  arg = arg or "focalnet_large_fl3"
  if arg not in IMAGE_SIZE:
    raise ValueError(f"finetune.py:{arg}: expected one of {', '.join(IMAGE_SIZE)}.")
  config = default.get_config()
  config.model.name = arg
  config.model.drop_path_rate = 0.2
  config.execution.remat = "block"
  config.image_size = IMAGE_SIZE[arg]
  config.batch_size = 512
  config.eval_batch_size = 512
  config.num_epochs = 30
  config.warmup_epochs = 5.0
  config.base_lr = 2e-5
  config.warmup_lr = 2e-8
  config.min_lr = 2e-7
  config.weight_decay = 1e-8
  config.ema_decay = 0.9999
  config.mesh.data = 1
  config.mesh.fsdp = -1
  config.checkpoint_every_steps = 500
  return config
