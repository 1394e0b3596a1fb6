"""From a checkpoint to numbers: a split's exact metrics and report (`report`), or the top-k
classes of single images (`predict`). Checkpoints and published weights are read by
`focalnet_jax.from_pretrained`, whose `.info` carries their preprocessing and class names."""
from focalnet_jax.evaluation.predict import predict_files, preprocess_files, top_k
from focalnet_jax.evaluation.report import (
    as_pretrained, default_report_path, eval_config, evaluate_checkpoint, num_classes_of, write_report,
)
from focalnet_jax.train.eval_step import evaluate, make_eval_step, model_logits_fn

__all__ = [
    "as_pretrained", "default_report_path", "eval_config", "evaluate", "evaluate_checkpoint", "make_eval_step",
    "model_logits_fn", "num_classes_of", "predict_files", "preprocess_files", "top_k", "write_report",
]
