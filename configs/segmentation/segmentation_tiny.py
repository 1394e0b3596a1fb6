r"""A tiny FocalNet + FPN + Semantic FPN head on the synthetic squares task (focalnet_jax.segmentation).

  python -m focalnet_jax.segmentation.train --config configs/segmentation/segmentation_tiny.py

About a minute on 2 CPU cores. A smoke run of the dense-prediction wiring, not a benchmark: no
COCO/ADE20K numbers are claimed. For a real backbone, set `model.overrides` to {} (the variant's
own architecture), `model.out_indices` as needed, and load converted weights
(`python -m focalnet_jax.tools.convert --backbone ...`) into `params['backbone']`.
"""
import ml_collections


def get_config(arg=None):
  del arg
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict()
  config.model.name = "focalnet_tiny_srf"
  config.model.out_indices = (0, 1, 2, 3)
  # Shrunk to run in seconds on a CPU; 'xla' compiles the depthwise convs fastest there.
  config.model.overrides = ml_collections.ConfigDict(dict(embed_dim=16, depths=(1, 1, 1, 1), drop_path_rate=0.1,
                                                       execution=dict(depthwise="xla")))
  config.fpn_channels = 32
  config.head_channels = 32
  config.head_groups = 8
  config.num_classes = 4  # background + 3 square classes
  config.ignore_index = 255
  config.image_size = (64, 64)
  config.batch_size = 8
  config.steps = 60
  config.learning_rate = 2e-3
  config.weight_decay = 0.05
  config.seed = 0
  config.log_every = 10
  return config
