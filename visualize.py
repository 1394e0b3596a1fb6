r"""Pictures of a FocalNet: modulator and gate maps for one image, or a run's training curves.

  python visualize.py --checkpoint runs/quickstart --image digit.png --output modulation.png
  python visualize.py --workdir runs/quickstart --curves --output curves.png

--checkpoint takes a training workdir or a checkpoint directory (train.py or the converter);
the image goes through the run's eval transform (or that of --config). A thin entry point
over `focalnet_jax.tools.visualize`.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "Training workdir, checkpoint directory, published weights (file or directory) or hub id.")
_IMAGE = flags.DEFINE_string("image", None, "Image file to look at (with --checkpoint).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir holding metrics.jsonl (with --curves).")
_CURVES = flags.DEFINE_bool("curves", False, "Plot the training curves of --workdir.")
_OUTPUT = flags.DEFINE_string(
    "output", None, "PNG to write, or a directory to write the default name into; default "
    "modulation_<image name>.png or <workdir>/curves.png.")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config whose data settings preprocess the image (default: the run's).")
_BLOCKS = flags.DEFINE_enum(
    "blocks", "last", ["last", "mean"],
    "Modulator map of each stage's last block, or the mean over its blocks.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_EMA = flags.DEFINE_bool("ema", False, "Use the EMA parameters of the checkpoint.")
_TITLE = flags.DEFINE_string("title", None, "Figure title (default: names the checkpoint or workdir).")
_TOP_K = flags.DEFINE_integer("top_k", 5, "Number of predictions to show.")


def output_path(output: str | None, default: str) -> str:
  """--output as given; a directory (existing, or written with a trailing '/') gets the default
  file name inside it instead of being mistaken for a file name."""
  if not output:
    return default
  if os.path.isdir(output) or output.endswith(("/", os.sep)):
    return os.path.join(output, os.path.basename(default))
  return output


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _CURVES.value:
    if not _WORKDIR.value:
      raise app.UsageError("--curves needs --workdir (the train.py run directory).")
  elif not (_CHECKPOINT.value and _IMAGE.value):
    raise app.UsageError("Give --checkpoint DIR --image PATH, or --workdir DIR --curves.")
  from focalnet_jax.tools import visualize  # after flag parsing, so --jax_* flags apply

  try:
    if _CURVES.value:
      output = output_path(_OUTPUT.value, os.path.join(_WORKDIR.value, "curves.png"))
      out = visualize.visualize_curves(_WORKDIR.value, output, title=_TITLE.value)
    else:
      stem = os.path.splitext(os.path.basename(_IMAGE.value))[0]
      out = visualize.visualize_image(
          _CHECKPOINT.value, _IMAGE.value, output_path(_OUTPUT.value, f"modulation_{stem}.png"), config=_CONFIG.value,
          step=_STEP.value, ema=_EMA.value, reduce=_BLOCKS.value, k=_TOP_K.value,
          title=_TITLE.value)
  except (FileNotFoundError, ValueError, KeyError) as e:
    sys.exit(f"visualize.py: error: {e}")
  print(f"Wrote {out}")


if __name__ == "__main__":
  app.run(main)
