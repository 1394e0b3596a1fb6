"""Sharded training: `train_and_evaluate(config, workdir)`."""
from focalnet_jax.train.loop import train_and_evaluate

__all__ = ["train_and_evaluate"]
