"""Evaluation of checkpoints on dataset splits, and predictions for single images."""
from focalnet_jax.evaluation.report import *  # noqa: F401,F403
from focalnet_jax.evaluation.report import (
    checkpoint_dir, class_names_for, evaluate, evaluate_checkpoint, load_model, make_eval_step,
    model_logits_fn, num_classes_of, predict_files, preprocess_files, settings_from_checkpoint, top_k,
)
