r"""Evaluates a FocalNet checkpoint on a dataset split, or predicts the classes of single images.

  # a training run's latest checkpoint, on the data settings it was trained with
  python eval.py --checkpoint runs/quickstart
  # converted published weights on ImageNet-1K validation (TFDS), and on ImageNet-V2 / -ReaL / -A / -R
  python eval.py --config configs/focalnet_t.py --checkpoint weights/focalnet_tiny_srf --data_dir $TFDS_DATA_DIR
  python eval.py --checkpoint weights/focalnet_tiny_srf --dataset imagenet_v2 --split test
  python eval.py --checkpoint weights/focalnet_tiny_srf --dataset imagenet2012_real --split validation
  # single images: top-5 classes with probabilities
  python eval.py --checkpoint weights/focalnet_tiny_srf --image cat.jpg --image dog.png

`--checkpoint` is anything `focalnet_jax.from_pretrained` reads: a training workdir, its
checkpoints/ directory, a directory written by `python -m focalnet_jax.tools.convert`, published
weights or a hub id. The data settings come from `--config` if given, else configs/default.py
with the weights' eval preprocessing (`from_pretrained(...).info`: the training run's, the
published weights', else the official recipe's at the variant's resolution) and the training
run's data; the flags below override them. The report (top-1, top-5, mean loss, number
of examples, images/s, and calibration: ECE, adaptive ECE, NLL, Brier score) is printed and written
as JSON beside the checkpoint (or to --output). See docs/evaluation.md.
"""
from __future__ import annotations

import json
import os

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file for the data settings (optional).",
                                          lock_config=True)
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "Training workdir, checkpoint directory, published weights (file or directory) or hub id.")
_IMAGES = flags.DEFINE_multi_string("image", [], "Image file(s) to classify instead of evaluating a split.")
_DATASET = flags.DEFINE_string("dataset", None, "TFDS name, 'folder:/path' or 'digits' (overrides the config).")
_SPLIT = flags.DEFINE_string("split", None, "Split to evaluate (overrides config.eval_split).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir (overrides config.data_dir).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", None, "Eval crop size (overrides config.image_size).")
_CROP_RATIO = flags.DEFINE_float("crop_ratio", None, "Resize shorter side to image_size / crop_ratio, then crop.")
_INTERPOLATION = flags.DEFINE_enum("interpolation", None, ["bicubic", "bilinear"], "Resize interpolation.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Global eval batch size (overrides config.eval_batch_size).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_EMA = flags.DEFINE_bool("ema", False, "Evaluate the EMA weights instead of the raw ones.")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Compute dtype (default: the checkpoint's).")
_OUTPUT = flags.DEFINE_string("output", None, "Where to write the JSON report.")
_TOP_K = flags.DEFINE_integer("top_k", 5, "Classes to print per image with --image.")
_CALIBRATE_ON = flags.DEFINE_string(
    "calibrate_on", None, "Fit temperature scaling on this split (e.g. train, or a held-out split) and report "
    "the calibration after it too.")
_PROTOCOL = flags.DEFINE_enum(
    "protocol", "classify", ["classify", "knn", "linear"],
    "classify: the model's head. knn / linear: a k-NN vote / logistic regression on the frozen pooled features "
    "of the train split (config.train_split), scored on the eval split.")
_KNN_K = flags.DEFINE_integer("knn_k", None, "kNN: neighbours that vote (overrides config.probe.knn_k).")
_KNN_T = flags.DEFINE_float("knn_temperature", None, "kNN: vote temperature (overrides config.probe.knn_temperature).")
_FEATURES_DIR = flags.DEFINE_string(
    "features_dir", None, "Where extracted features are cached (default: <checkpoint dir>/features).")
_ROBUSTNESS = flags.DEFINE_bool(
    "robustness", False, "Evaluate on every robustness set in --data_dir (ImageNet-1K, -V2, -ReaL, -A, -R, -Sketch, "
    "-C with mCE) and write one table (Markdown and JSON); missing sets are listed with their prepare command.")
_RELIABILITY_PLOT = flags.DEFINE_string("reliability_plot", None, "Write the reliability diagram to this PNG.")
flags.mark_flags_as_required(["checkpoint"])


def resolve_config(info):
  from configs import default  # noqa: PLC0415
  from focalnet_jax import evaluation

  config = _CONFIG.value
  if config is None:
    config = evaluation.eval_config(default.get_config(), info)
  else:
    config = config.copy_and_resolve_references()
  for flag, key in ((_DATASET, "dataset"), (_SPLIT, "eval_split"), (_DATA_DIR, "data_dir"),
                    (_IMAGE_SIZE, "image_size"), (_CROP_RATIO, "crop_ratio"),
                    (_INTERPOLATION, "interpolation"), (_BATCH_SIZE, "eval_batch_size"),
                    (_KNN_K, "probe.knn_k"), (_KNN_T, "probe.knn_temperature")):
    if flag.value is not None:
      config[key] = flag.value
  from focalnet_jax.train import config_check  # noqa: PLC0415

  # Checked before any image is read: a bad value is never blamed on the files.
  config_check.check_values(config, {"image_size": "--image_size", "crop_ratio": "--crop_ratio",
                                     "interpolation": "--interpolation", "eval_batch_size": "--batch_size",
                                     "eval_split": "--split", "dataset": "--dataset", "aug.mean": "--config.aug.mean",
                                     "aug.std": "--config.aug.std"})
  return config


def frozen_features(loaded, config) -> dict:
  """--protocol knn / linear: the probe's top-1 printed and its report returned."""
  from focalnet_jax.evaluation import probes  # noqa: PLC0415

  cache_dir = _FEATURES_DIR.value or os.path.join(loaded.info.directory, "features")
  report = probes.evaluate_frozen(loaded, config, _PROTOCOL.value, ema=_EMA.value, cache_dir=cache_dir)
  detail = (f"k={report['k']}, T={report['temperature']}" if report["protocol"] == "knn"
            else f"C={report['C']} chosen on {report['holdout']:.0%} of {report['train_split']}")
  cached = " (features from the cache)" if all(report["features_cached"].values()) else ""
  print(f"{report['model']} step {report['step']}{' (EMA)' if report['ema'] else ''} frozen features, "
        f"{report['protocol']} ({detail}), fitted on {report['dataset']}:{report['train_split']} "
        f"({report['num_train']} images), on {report['split']}: top-1 {report['top1']:.2%}  top-5 {report['top5']:.2%}  "
        f"({report['num_examples']} images; features {report['feature_seconds']:.1f}s{cached}, "
        f"probe {report['probe_seconds']:.1f}s)", flush=True)
  return report


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from focalnet_jax import evaluation
  from focalnet_jax.train import runlog

  runlog.quiet_library_logs()  # the report, not orbax's and TF's INFO lines
  loaded = evaluation.as_pretrained(_CHECKPOINT.value, step=_STEP.value, ema=_EMA.value, dtype=_DTYPE.value)
  try:
    config = resolve_config(loaded.info)
  except ValueError as e:
    raise SystemExit(f"eval.py: error: {e}") from e
  if _IMAGES.value:
    preds = evaluation.predict_files(loaded, _IMAGES.value, config, k=_TOP_K.value)
    for path, top in zip(_IMAGES.value, preds):
      print(os.path.basename(path))
      for name, prob in top:
        print(f"  {prob:7.2%}  {name}")
    return
  if _ROBUSTNESS.value:
    from focalnet_jax.evaluation import robustness  # noqa: PLC0415

    report = robustness.run(loaded, config)
    table = robustness.markdown(report)
    print(table, flush=True)
    output = _OUTPUT.value or os.path.join(loaded.info.directory, f"robustness_step{loaded.info.step}.json")
    report["markdown"] = os.path.splitext(output)[0] + ".md"
    _write(report, output, markdown=table)
    return
  if _PROTOCOL.value != "classify":
    report = frozen_features(loaded, config)
    _write(report, _OUTPUT.value or evaluation.default_report_path(loaded, config, _EMA.value).replace(
        ".json", f"_{_PROTOCOL.value}.json"))
    return
  report = evaluation.evaluate_checkpoint(loaded, config, ema=_EMA.value, write=False,
                                          calibrate_on=_CALIBRATE_ON.value, reliability_plot=_RELIABILITY_PLOT.value)
  # The metrics first: a report that cannot be written must not cost the evaluation.
  print(f"{report['model']} step {report['step']}{' (EMA)' if report['ema'] else ''} on "
        f"{report['dataset']}:{report['split']} at {report['image_size']}px: top-1 {report['top1']:.2%}  "
        f"top-{report.get('top_k', 5)} {report['top5']:.2%}  loss {report['loss']:.4f}  "
        + (f"ReaL top-1 {report['real_top1']:.2%}  " if "real_top1" in report else "")
        + f"({int(report['num_examples'])} images, {report['images_per_s']:.0f} img/s)", flush=True)
  print(f"calibration: ECE {report['ece']:.2%}  adaptive ECE {report['adaptive_ece']:.2%}  "
        f"NLL {report['nll']:.4f}  Brier {report['brier']:.4f}", flush=True)
  if "temperature_scaled" in report:
    ts = report["temperature_scaled"]
    print(f"temperature scaling (T={ts['temperature']:.3f}, fitted on {ts['fitted_on']}): ECE {ts['ece']:.2%}  "
          f"adaptive ECE {ts['adaptive_ece']:.2%}  NLL {ts['nll']:.4f}  Brier {ts['brier']:.4f}", flush=True)
  if "reliability_plot" in report:
    print(f"reliability diagram: {report['reliability_plot']}", flush=True)
  _write(report, _OUTPUT.value or evaluation.default_report_path(loaded, config, _EMA.value))


def _write(report: dict, output: str, markdown: str | None = None) -> None:
  """The JSON report (and the Markdown table beside it) written after the metrics were printed."""
  from focalnet_jax import evaluation  # noqa: PLC0415

  try:
    report["output"] = evaluation.write_report(report, output)
    if markdown is not None:
      with open(report["markdown"], "w") as f:
        f.write(markdown)
  except OSError as e:  # the report's directory (beside the checkpoint by default) is not writable
    print(json.dumps(report))
    raise SystemExit(f"eval.py: error: cannot write the report to {output}: {e}. The metrics are above; "
                     "pass --output PATH in a writable directory to keep them as JSON.") from e
  print(json.dumps(report))


if __name__ == "__main__":
  app.run(main)
