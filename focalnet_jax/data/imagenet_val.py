"""ImageNet's flat validation folder, sorted into class folders (`folder:` datasets read those).

`ILSVRC2012_img_val.tar` unpacks into 50,000 files in one directory. Their classes come from
  - Kaggle's `LOC_val_solution.csv` (`ImageId,PredictionString`, the wnid first in the string), or
  - the devkit: `data/ILSVRC2012_validation_ground_truth.txt` (one ILSVRC2012 id per image, in file
    order) and `data/meta.mat`, which maps those ids to wnids. The ids are *not* in sorted-wnid
    order (id 1 is n02119789, 'kit fox'), so they must go through meta.mat.

    python -m focalnet_jax.data.imagenet_val --val_dir ILSVRC2012_img_val \
        --devkit ILSVRC2012_devkit_t12 --output imagenet/val        # or --solution LOC_val_solution.csv
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import tarfile
from typing import Mapping, Sequence

_GROUND_TRUTH = "data/ILSVRC2012_validation_ground_truth.txt"
_META = "data/meta.mat"
_VAL_FILE = re.compile(r"^ILSVRC2012_val_(\d{8})\.JPEG$", re.IGNORECASE)


def labels_from_solution(path: str) -> dict[str, str]:
  """{image id: wnid} from Kaggle's LOC_val_solution.csv."""
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  if not rows or not {"ImageId", "PredictionString"} <= set(rows[0]):
    raise ValueError(f"{path} is not LOC_val_solution.csv: expected the columns ImageId,PredictionString.")
  return {row["ImageId"]: row["PredictionString"].split()[0] for row in rows}


def _devkit_member(devkit: str, member: str) -> bytes:
  """One file of the devkit, from its directory or its .tar.gz."""
  if os.path.isdir(devkit):
    with open(os.path.join(devkit, member), "rb") as f:
      return f.read()
  with tarfile.open(devkit) as tar:
    names = [n for n in tar.getnames() if n.endswith(member)]
    if not names:
      raise FileNotFoundError(f"{devkit} has no {member}; pass ILSVRC2012_devkit_t12(.tar.gz).")
    return tar.extractfile(names[0]).read()


def labels_from_devkit(devkit: str) -> dict[str, str]:
  """{image id: wnid} from the ILSVRC2012 devkit (a directory or the .tar.gz), ids mapped through meta.mat."""
  import io

  from scipy.io import loadmat

  synsets = loadmat(io.BytesIO(_devkit_member(devkit, _META)), squeeze_me=True)["synsets"]
  wnid_of = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["num_children"]) == 0}
  ids = _devkit_member(devkit, _GROUND_TRUTH).decode().split()
  unknown = sorted({int(i) for i in ids} - set(wnid_of))
  if unknown:
    raise ValueError(f"{devkit}: ground-truth ids {unknown[:5]} are not leaf synsets of meta.mat.")
  return {f"ILSVRC2012_val_{n:08d}": wnid_of[int(i)] for n, i in enumerate(ids, start=1)}


def sort_val(val_dir: str, output: str, labels: Mapping[str, str], mode: str = "move") -> dict[str, int]:
  """Puts each `ILSVRC2012_val_*.JPEG` of `val_dir` into `output/<wnid>/` (move, copy or symlink).

  Returns {wnid: images}. Every file must have a label, so a wrong label file fails before anything moves.
  """
  files = sorted(f for f in os.listdir(val_dir) if _VAL_FILE.match(f))
  if not files:
    raise FileNotFoundError(f"{val_dir} has no ILSVRC2012_val_XXXXXXXX.JPEG files (already sorted?).")
  unlabelled = [f for f in files if os.path.splitext(f)[0] not in labels]
  if unlabelled:
    raise ValueError(f"{len(unlabelled)} images have no label (e.g. {unlabelled[0]}); is it the 2012 label file?")
  place = {"move": shutil.move, "copy": shutil.copy2, "symlink": lambda s, d: os.symlink(os.path.abspath(s), d)}[mode]
  counts: dict[str, int] = {}
  for f in files:
    wnid = labels[os.path.splitext(f)[0]]
    os.makedirs(os.path.join(output, wnid), exist_ok=True)
    place(os.path.join(val_dir, f), os.path.join(output, wnid, f))
    counts[wnid] = counts.get(wnid, 0) + 1
  return counts


def main(argv: Sequence[str] | None = None) -> None:
  """The command line (see the module docstring)."""
  parser = argparse.ArgumentParser(prog="python -m focalnet_jax.data.imagenet_val", description=__doc__.split("\n")[0])
  parser.add_argument("--val_dir", required=True, help="the flat folder of ILSVRC2012_val_*.JPEG")
  labels = parser.add_mutually_exclusive_group(required=True)
  labels.add_argument("--solution", help="Kaggle's LOC_val_solution.csv")
  labels.add_argument("--devkit", help="ILSVRC2012_devkit_t12 directory or .tar.gz")
  parser.add_argument("--output", help="where the class folders go (default: inside --val_dir)")
  parser.add_argument("--mode", choices=("move", "copy", "symlink"), default="move")
  args = parser.parse_args(argv)
  found = labels_from_solution(args.solution) if args.solution else labels_from_devkit(args.devkit)
  counts = sort_val(args.val_dir, args.output or args.val_dir, found, args.mode)
  print(f"Sorted {sum(counts.values())} images into {len(counts)} class folders under {args.output or args.val_dir}.")


if __name__ == "__main__":
  main()
