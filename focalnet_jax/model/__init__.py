"""The paper's network (Focal Modulation Networks, Yang et al., NeurIPS 2022) and its 15 variants."""
from focalnet_jax.model.layers import DropPath, dense_init, gelu
from focalnet_jax.model.execution import Execution
from focalnet_jax.model.modulation import FocalModulation
from focalnet_jax.model.network import FocalNet, FocalNetBlock, FocalNetStage
from focalnet_jax.model.validation import nearest_multiples, per_stage
from focalnet_jax.model.variants import create_model, default_image_size, list_models, model_kwargs
from focalnet_jax.model.backbone import FeatureMaps, FocalNetBackbone, create_backbone  # after variants, which it uses

__all__ = [
    "DropPath", "Execution", "FeatureMaps", "FocalModulation", "FocalNet", "FocalNetBackbone", "FocalNetBlock",
    "FocalNetStage",
    "create_backbone", "create_model", "default_image_size", "dense_init", "gelu", "list_models", "model_kwargs", "nearest_multiples", "per_stage",
]
