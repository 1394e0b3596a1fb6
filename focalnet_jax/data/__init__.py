"""Input pipelines: TFDS datasets, image folders, scikit-learn digits, synthetic batches.

Importing this package does not import TensorFlow (the trainer must import on machines
without it); TF is imported when a TFDS or folder pipeline is first built.
"""
from focalnet_jax.data.digits import prepare_digits
from focalnet_jax.data.pipeline import DatasetInfo, eval_iterator, get_info, train_iterator
from focalnet_jax.data.synthetic import synthetic_iterator

__all__ = [
    "DatasetInfo",
    "eval_iterator",
    "get_info",
    "prepare_digits",
    "synthetic_iterator",
    "train_iterator",
]
