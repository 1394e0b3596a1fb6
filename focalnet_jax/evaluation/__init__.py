"""From a checkpoint to numbers: a split's exact metrics and report (`report`), or the top-k
classes of single images (`predict`)."""
from focalnet_jax.evaluation.predict import predict_files, preprocess_files, top_k
from focalnet_jax.evaluation.report import (
    LoadedModel, checkpoint_dir, class_names_for, default_report_path, evaluate_checkpoint, load_model,
    num_classes_of, settings_from_checkpoint, write_report,
)
from focalnet_jax.train.eval_step import evaluate, make_eval_step, model_logits_fn

__all__ = [
    "LoadedModel", "checkpoint_dir", "class_names_for", "default_report_path", "evaluate", "evaluate_checkpoint",
    "load_model", "make_eval_step", "model_logits_fn", "num_classes_of", "predict_files", "preprocess_files",
    "settings_from_checkpoint", "top_k", "write_report",
]
