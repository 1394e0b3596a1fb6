"""Dense-prediction configs (focalnet_jax.segmentation), run by `python -m focalnet_jax.segmentation.train`, not train.py."""
