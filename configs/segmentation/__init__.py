"""Dense-prediction configs (focalnet_jax.dense), run by `python -m focalnet_jax.dense.train`, not train.py."""
