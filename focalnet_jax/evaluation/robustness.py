"""The robustness table of a 1K classifier: every ImageNet variant found in a TFDS data dir,
evaluated with the sharded eval step, in one Markdown and JSON table.

Sets: ImageNet-1K validation (the clean reference), -V2, -ReaL, -A, -R (their label spaces as in
`focalnet_jax.data.labels`), -Sketch (`imagenet_sketch`) and ImageNet-C (TFDS
`imagenet2012_corrupted/<corruption>_<severity>`, 15 corruptions x 5 severities, plus the 4
extra corruptions where present). ImageNet-C is summarised as Hendrycks & Dietterich (ICLR 2019)
define it: the corruption error CE_c = sum_s E_{s,c} / sum_s E^AlexNet_{s,c} (top-1 errors over
the 5 severities, normalised by AlexNet's; data/alexnet_imagenet_c_errors.tsv gives AlexNet's
and its source) and mCE = the mean CE over the 15 corruptions; the extra 4 get top-1 only. A set
that is not prepared in the data dir is listed as missing with the command that prepares it.
"""
from __future__ import annotations

import functools
import os
from typing import Any

import ml_collections
import numpy as np

from focalnet_jax.evaluation import report as report_lib
from focalnet_jax.train import config_check
from focalnet_jax.train import eval_step as eval_lib

# (row name, TFDS name, split)
SETS = (
    ("ImageNet-1K", "imagenet2012", "validation"),
    ("ImageNet-V2", "imagenet_v2", "test"),
    ("ImageNet-ReaL", "imagenet2012_real", "validation"),
    ("ImageNet-A", "imagenet_a", "test"),
    ("ImageNet-R", "imagenet_r", "test"),
    ("ImageNet-Sketch", "imagenet_sketch", "test"),
)
EXTRA_CORRUPTIONS = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
SEVERITIES = (1, 2, 3, 4, 5)
_MANUAL = ("ImageNet's ILSVRC2012_img_val.tar must be in {d}/downloads/manual/ (see "
           "https://image-net.org/download-images); then\n")


@functools.cache
def alexnet_errors() -> dict[str, float]:
  """AlexNet's mean top-1 error per corruption (the mCE normaliser; 15 corruptions, in the paper's order)."""
  path = os.path.join(os.path.dirname(__file__), "data", "alexnet_imagenet_c_errors.tsv")
  with open(path) as f:
    rows = [line.split("\t") for line in f if line.strip() and not line.startswith("#")]
  return {name: float(err) for name, err in rows}


def prepare_command(tfds_name: str, data_dir: str) -> str:
  if tfds_name == "imagenet2012_corrupted":  # one TFDS config per (corruption, severity)
    names = " ".join((*alexnet_errors(), *EXTRA_CORRUPTIONS))
    return (_MANUAL.format(d=data_dir) + f"  for c in {names}; do for s in 1 2 3 4 5; do "
            f"tfds build imagenet2012_corrupted/${{c}}_$s --data_dir {data_dir}; done; done")
  if tfds_name in ("imagenet2012", "imagenet2012_real"):
    return _MANUAL.format(d=data_dir) + f"  tfds build {tfds_name} --data_dir {data_dir}"
  return f"tfds build {tfds_name} --data_dir {data_dir}"


def _is_missing(error: ValueError) -> bool:
  return "is not prepared" in str(error)  # focalnet_jax.data.sources.TfdsSource._not_prepared


class _Suite:
  """Evaluates one checkpoint on dataset after dataset, compiling one step per label space."""

  def __init__(self, loaded, config: ml_collections.ConfigDict):
    self.loaded, self.config = loaded, config
    self.logits_fn = eval_lib.model_logits_fn(loaded.model, config_check.execution_of(config).chunk_elements)
    self.steps: dict[Any, Any] = {}

  def evaluate(self, tfds_name: str, split: str, crop_ratio: float | None = None) -> dict[str, float] | None:
    """The metrics on one dataset split, or None when it is not prepared in the data dir."""
    config = self.config.copy_and_resolve_references()
    config.dataset, config.eval_split, config.train_split = tfds_name, split, ""
    if crop_ratio is not None:
      config.crop_ratio = crop_ratio
    try:
      setup = report_lib.eval_setup(self.loaded, config)
      key = None if setup.subset is None else tuple(setup.subset.tolist())
      if key not in self.steps:
        self.steps[key] = eval_lib.make_eval_step(self.logits_fn, setup.num_classes, setup.subset)
      return eval_lib.summarise(*report_lib.run_pass(setup, self.steps[key], split))
    except ValueError as e:
      if _is_missing(e):
        return None
      raise


def _corruption_rows(suite: _Suite, missing: list[dict[str, str]], data_dir: str) -> tuple[list, float | None]:
  rows, alexnet = [], alexnet_errors()
  absent = []
  for corruption in (*alexnet, *EXTRA_CORRUPTIONS):
    top1 = {}
    for s in SEVERITIES:
      # ImageNet-C images are already the 224 centre crops of the val images (TFDS, as the paper's
      # files): read them whole (the benchmark's own eval only centre-crops 224 of 224), not cropped again.
      result = suite.evaluate(f"imagenet2012_corrupted/{corruption}_{s}", "validation", crop_ratio=1.0)
      if result is not None:
        top1[s] = result["top1"]
    if not top1:
      absent.append(corruption)
      continue
    row = {"corruption": corruption, "top1_by_severity": {str(s): v for s, v in top1.items()},
           "top1": float(np.mean(list(top1.values()))), "extra": corruption in EXTRA_CORRUPTIONS}
    if corruption in alexnet and len(top1) == len(SEVERITIES):
      row["ce"] = float(np.mean([1 - v for v in top1.values()]) / alexnet[corruption])
    rows.append(row)
  if absent:
    missing.append({"set": f"ImageNet-C ({', '.join(absent)})", "tfds": "imagenet2012_corrupted",
                    "prepare": prepare_command("imagenet2012_corrupted", data_dir)})
  ces = [r["ce"] for r in rows if "ce" in r]
  return rows, (float(np.mean(ces)) if len(ces) == len(alexnet) else None)


def run(loaded, config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The robustness report of a checkpoint opened by `focalnet_jax.from_pretrained` on `config.data_dir`."""
  if report_lib.num_classes_of(loaded.params) != 1000:
    raise ValueError("The robustness suite evaluates ImageNet-1K classifiers; this checkpoint's head has "
                     f"{report_lib.num_classes_of(loaded.params)} classes.")
  data_dir = config.data_dir or os.path.expanduser("~/tensorflow_datasets")
  suite, sets, missing = _Suite(loaded, config), [], []
  for name, tfds_name, split in SETS:
    result = suite.evaluate(tfds_name, split)
    if result is None:
      missing.append({"set": name, "tfds": tfds_name, "prepare": prepare_command(tfds_name, data_dir)})
      continue
    row = {"set": name, "tfds": f"{tfds_name}:{split}", "num_examples": int(result["num_examples"]),
           "top1": result["top1"], "top5": result["top5"], "ece": result["ece"], "nll": result["nll"]}
    if "real_top1" in result:
      row["real_top1"] = result["real_top1"]
    sets.append(row)
  corruptions, mce = _corruption_rows(suite, missing, data_dir)
  return {"checkpoint": loaded.info.directory, "step": int(loaded.info.step), "model": loaded.info.variant,
          "data_dir": data_dir, "image_size": config.image_size, "sets": sets, "imagenet_c": corruptions,
          "mce": mce, "mce_normaliser": "AlexNet (Hendrycks & Dietterich 2019)", "missing": missing}


def markdown(report: dict[str, Any]) -> str:
  """The report as Markdown tables: the sets, ImageNet-C per corruption with mCE, what is missing."""
  out = [f"## Robustness of {report['model']} step {report['step']} ({report['checkpoint']})", "",
         "| set | images | top-1 | top-5 | ECE | NLL |", "|---|---:|---:|---:|---:|---:|"]
  for r in report["sets"]:
    real = f" (ReaL top-1 {r['real_top1']:.2%})" if "real_top1" in r else ""
    out.append(f"| {r['set']}{real} | {r['num_examples']} | {r['top1']:.2%} | {r['top5']:.2%} | "
               f"{r['ece']:.2%} | {r['nll']:.3f} |")
  if report["imagenet_c"]:
    out += ["", "| ImageNet-C corruption | " + " | ".join(f"s{s}" for s in SEVERITIES) + " | top-1 | CE |",
            "|---|" + "---:|" * (len(SEVERITIES) + 2)]
    for r in report["imagenet_c"]:
      cells = [f"{r['top1_by_severity'][str(s)]:.2%}" if str(s) in r["top1_by_severity"] else "-" for s in SEVERITIES]
      ce = f"{r['ce']:.1%}" if "ce" in r else ("extra" if r["extra"] else "-")
      out.append(f"| {r['corruption']} | " + " | ".join(cells) + f" | {r['top1']:.2%} | {ce} |")
    mce = f"{report['mce']:.1%}" if report["mce"] is not None else "n/a (needs all 15 corruptions x 5 severities)"
    out += ["", f"mCE {mce}, normalised by AlexNet's errors (Hendrycks & Dietterich 2019)."]
  if report["missing"]:
    out += ["", "Missing (not prepared in the data dir):"]
    for m in report["missing"]:
      out.append(f"- {m['set']}: " + m["prepare"].replace("\n", " "))
  return "\n".join(out) + "\n"
