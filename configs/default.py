r"""Every default of training and evaluation, in one place, and the paper's nine ImageNet-1K recipes.

  python train.py --config configs/default.py:focalnet_small_srf --workdir runs/focalnet_s \
      --config.data_dir=$TFDS_DATA_DIR

trains that variant on ImageNet-1K for 300 epochs with the official recipe. `:VARIANT` is one of the nine variants the
paper trains from scratch on ImageNet-1K (PAPER_TOP1 below, with the paper's top-1); no arg is
FocalNet-T (SRF), the same as `configs/focalnet_t.py`. Only the variant differs between them: its
drop-path rate and architecture come with the variant. Any field can be overridden on the command
line (`--config.batch_size=256`); a misspelt field is an error.

Values derived from others are computed by the trainer from the FINAL config, after
command-line overrides (see `focalnet_jax.train.optim.resolve_schedule`):
  steps_per_epoch = num_train // batch_size
  total_steps     = total_steps if > 0 else num_epochs * steps_per_epoch
  warmup_steps    = warmup_epochs * steps_per_epoch
  lr (peak)       = base_lr * batch_size / lr_base_batch_size   (likewise warmup_lr, min_lr)
300 epochs = 375,300 steps at batch 1024 (bfloat16; no wall time measured yet).
"""
from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from focalnet_jax.data.eval_images import IMAGENET_MEAN, IMAGENET_STD

# The variants the paper trains on ImageNet-1K from scratch with this recipe, and the top-1 (%) it
# reports for each (Tables 1 and 2 of the paper; isotropic: Table 3).
PAPER_TOP1 = {
    "focalnet_tiny_srf": 82.1, "focalnet_tiny_lrf": 82.3, "focalnet_small_srf": 83.4,
    "focalnet_small_lrf": 83.5, "focalnet_base_srf": 83.7, "focalnet_base_lrf": 83.9,
    "focalnet_tiny_iso": 74.1, "focalnet_small_iso": 80.9, "focalnet_base_iso": 82.4,
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The ImageNet-1K recipe for variant `arg` (a PAPER_TOP1 name; None: focalnet_tiny_srf)."""
  variant = arg or "focalnet_tiny_srf"
  if variant not in PAPER_TOP1:
    raise ValueError(f"configs/default.py:{variant}: not one of the ImageNet-1K variants "
                     f"{', '.join(PAPER_TOP1)}. The 22K models are fine-tuned with configs/finetune.py:VARIANT.")
  c = ml_collections.ConfigDict()
  _model(c, variant)
  _execution(c)
  _data(c)
  _recipe(c)
  _run(c)
  return c


def _model(c: ml_collections.ConfigDict, variant: str) -> None:
  """The network: a published variant; every None field keeps the variant's value."""
  # --- model: a published variant; every None field keeps the variant's value --------------
  c.model = ml_collections.ConfigDict()
  c.model.name = variant
  c.model.num_classes = config_dict.placeholder(int)  # None: the dataset's class count
  c.model.embed_dim = config_dict.placeholder(int)
  c.model.depths = config_dict.placeholder(tuple)
  c.model.patch_size = config_dict.placeholder(int)
  c.model.focal_levels = config_dict.placeholder(object)  # int or one per stage
  c.model.focal_windows = config_dict.placeholder(object)
  c.model.focal_factor = config_dict.placeholder(int)
  c.model.mlp_ratio = config_dict.placeholder(float)
  c.model.drop_rate = config_dict.placeholder(float)
  c.model.drop_path_rate = config_dict.placeholder(float)
  c.model.use_conv_embed = config_dict.placeholder(bool)
  c.model.use_layerscale = config_dict.placeholder(bool)
  c.model.layerscale_value = config_dict.placeholder(float)
  c.model.use_postln = config_dict.placeholder(bool)
  c.model.use_postln_in_modulation = config_dict.placeholder(bool)
  c.model.normalize_modulator = config_dict.placeholder(bool)
  c.model.use_global_context = config_dict.placeholder(bool)
  c.model.use_gating = config_dict.placeholder(bool)
  c.model.interaction = config_dict.placeholder(str)
  # Mixed precision: bfloat16 compute, float32 parameters (the master weights).
  c.model.dtype = "bfloat16"
  c.model.param_dtype = "float32"
  # What the LayerNorms write, and so the dtype of the residual stream they read: None (float32,
  # as PyTorch AMP) or 'bfloat16' (fewer bytes per step on GPUs; docs/benchmarks.md). Their
  # statistics are float32 either way and the head stays float32. It changes values, so like
  # `dtype` it is part of the recorded model, not an execution choice.
  c.model.norm_dtype = config_dict.placeholder(str)
  # Deprecated (one release): the execution switches' former keys; use config.execution below.
  # Set, they still apply, with a warning naming the new key.
  c.model.depthwise_impl = config_dict.placeholder(str)
  c.model.focal_context_impl = config_dict.placeholder(str)
  c.model.remat = config_dict.placeholder(object)
  c.model.f_align = config_dict.placeholder(int)
  c.model.chunk_elements = config_dict.placeholder(object)


def _execution(c: ml_collections.ConfigDict) -> None:
  """How the model runs, never what it computes."""
  # --- execution: how the model runs, never what it computes (focalnet_jax/model/execution.py,
  # docs/execution.md). Same parameters and values under every choice, so a checkpoint does not
  # record them as its model, and a resumed run may change them. -------------------------------
  c.execution = ml_collections.ConfigDict()
  # The depthwise conv of each focal level: 'auto' picks the fastest for the backend when the model
  # is built ('native' or 'shift' on CPU, 'xla' on accelerators; focalnet_jax.kernels.depthwise).
  c.execution.depthwise = "auto"
  # The focal context Z^out of each modulation: 'reference' is the paper's level loop under
  # autodiff; 'fused' gives the same values and gradients from a custom VJP that stores only Z^0,
  # the kernels and the gates and recomputes the levels in the backward pass (less activation
  # memory in training; see focalnet_jax.model.focal_context).
  c.execution.focal_context = "reference"
  # What each block keeps for the backward pass (kernels/remat.py): 'none' (all; fastest while it
  # fits), 'block' (only its input: least memory) or 'dots' (its matmul outputs; elementwise work
  # is recomputed). True / False mean 'block' / 'none'.
  c.execution.remat = config_dict.FieldReference("none", field_type=object)
  # The layout f's matmul writes: q, f_z and the gates each at a multiple of this many channels
  # (same parameters; kernels/aligned_projection.py); 1: the plain layout.
  c.execution.f_align = 1
  # Inference (evaluation) runs each stage over chunks of the batch of at most this many
  # activation elements; 'auto': cache-sized chunks on CPU, whole batches on accelerators; 0: off.
  c.execution.chunk_elements = config_dict.FieldReference("auto", field_type=object)


def _data(c: ml_collections.ConfigDict) -> None:
  """The data and its augmentation."""
  # --- data (the contract of focalnet_jax.data; see notes in its module docstring) ---------
  c.dataset = "imagenet2012"  # TFDS name, 'folder:/path', 'digits' or 'synthetic'
  c.data_dir = config_dict.placeholder(str)  # None: TFDS's default; for 'digits', <workdir>/data
  c.train_split = "train"  # '' reads no train split (evaluation only)
  c.eval_split = "validation"
  c.image_size = 224
  c.crop_ratio = 0.875
  c.interpolation = "bicubic"
  c.batch_size = 1024  # global, over all devices and hosts
  c.eval_batch_size = 1024
  c.shuffle_buffer = 16_384
  c.data_threads = config_dict.placeholder(int)  # None: tf.data AUTOTUNE
  c.corrupt_images = "skip"
  # Image folders: the class names that are label ids 0, 1, ... (None: the train split's class
  # directories, sorted). Evaluation sets it to the checkpoint's label space.
  c.class_names = config_dict.placeholder(tuple)
  c.digits_split_seed = 0
  c.aug = ml_collections.ConfigDict()
  c.aug.rrc_scale = (0.08, 1.0)
  c.aug.rrc_ratio = (3.0 / 4.0, 4.0 / 3.0)
  c.aug.hflip = True
  c.aug.randaug_num_ops = 2
  c.aug.randaug_magnitude = 9
  c.aug.randaug_magnitude_std = 0.5
  c.aug.random_erase_prob = 0.25
  c.aug.mean = IMAGENET_MEAN
  c.aug.std = IMAGENET_STD


def _recipe(c: ml_collections.ConfigDict) -> None:
  """The paper's recipe: batch mixing, targets and optimisation."""
  # --- on-device batch mixing and targets (timm semantics) -------------------------------
  c.mixup_alpha = 0.8  # 0 disables mixup
  c.cutmix_alpha = 1.0  # 0 disables cutmix
  c.mixup_prob = 1.0  # probability of mixing a batch at all
  c.mixup_switch_prob = 0.5  # probability of cutmix rather than mixup when both are on
  c.label_smoothing = 0.1

  # --- optimisation ------------------------------------------------------------------------
  c.num_epochs = 300
  c.total_steps = -1  # > 0 overrides num_epochs
  c.base_lr = 5e-4  # at lr_base_batch_size; scaled linearly with batch_size
  c.warmup_lr = 5e-7
  c.min_lr = 5e-6
  c.lr_base_batch_size = 512
  c.warmup_epochs = 20.0
  c.weight_decay = 0.05  # not applied to norms, biases or layerscale gammas
  c.adam_b1 = 0.9
  c.adam_b2 = 0.999
  c.adam_eps = 1e-8
  c.grad_clip_norm = 5.0  # global norm; 0 disables
  c.optim = ml_collections.ConfigDict()
  # Layer-wise lr decay for fine-tuning: layer l of L (stem 0 ... head L-1, timm's FocalNet groups)
  # learns at lr * layer_decay^(L-1-l); 1.0: off. See configs/finetune.py.
  c.optim.layer_decay = 1.0
  c.grad_accum_steps = 1  # micro-batches per step; the global batch stays batch_size
  c.ema_decay = 0.0  # 0: no EMA of the weights; e.g. 0.9998 evaluates EMA params too
  # A non-finite loss or gradient: 'stop' (with the step, metric and last good checkpoint) or
  # 'skip' that update (state kept, step counted in the `skipped_steps` metric).
  c.nonfinite = "stop"


def _run(c: ml_collections.ConfigDict) -> None:
  """Devices, frozen-feature evaluation and bookkeeping."""
  # --- parallelism: a ('data', 'fsdp') device mesh; -1 = the remaining devices ---------------
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.fsdp_min_size = 2**14  # params with fewer elements are replicated, not sharded

  # --- evaluation of frozen features (eval.py --protocol knn / linear; docs/evaluation.md) ---
  c.probe = ml_collections.ConfigDict()
  c.probe.knn_k = 20  # neighbours that vote, as DINO (Caron et al. 2021)
  c.probe.knn_temperature = 0.07  # vote weight exp(cosine similarity / T), as DINO
  c.probe.linear_holdout = 0.1  # share of the train split that chooses the linear probe's regularisation
  c.probe.linear_c = (1e-3, 1e-2, 1e-1, 1.0, 10.0)  # inverse L2 strengths tried (scikit-learn's C)
  c.probe.linear_max_iter = 1000  # L-BFGS iterations per fit

  # --- bookkeeping ---------------------------------------------------------------------------
  c.seed = 0
  c.init_from = config_dict.placeholder(str)  # a checkpoint dir (ours or from convert) to fine-tune
  c.log_every_steps = 100
  c.eval_every_steps = -1  # -1: once per epoch; 0: only at the end
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.async_checkpoints = True  # write in a background thread while training continues
  # Rerunning a workdir resumes it; a config that changes the run's trajectory (model, batch
  # size, schedule, data, seed, ...) is refused, naming each field. True: continue it anyway under
  # the new values (logged). Logging, checkpoint and eval settings may always change.
  c.allow_config_change = False
