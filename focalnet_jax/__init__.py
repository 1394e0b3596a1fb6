"""FocalNet (Focal Modulation Networks) in JAX/Flax."""
from focalnet_jax.model import (
    Execution, FocalModulation, FocalNet, FocalNetBlock, FocalNetStage, create_model, default_image_size, list_models,
    model_kwargs,
)
from focalnet_jax.weights import Pretrained, PretrainedInfo, from_pretrained

__all__ = [
    "Execution",
    "FocalModulation",
    "FocalNet",
    "FocalNetBlock",
    "FocalNetStage",
    "Pretrained",
    "PretrainedInfo",
    "create_model",
    "default_image_size",
    "from_pretrained",
    "list_models",
    "model_kwargs",
]
__version__ = "0.1.0"
