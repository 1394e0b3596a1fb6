"""Long loops say how far they are: the folder scan's cached verdicts and the progress lines."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from focalnet_jax import progress
from focalnet_jax.data import folder


def test_progress_is_silent_at_first_then_reports_done_total_and_eta(monkeypatch):
  clock = iter([0.0, 5.0, 12.0, 15.0, 30.0])
  monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
  p = progress.Progress("Evaluating", 100)
  assert p.update(10) is None  # 5 s: still quiet
  assert p.update(40) == "Evaluating: 40/100 (40%), ETA 0m18s"  # 40 in 12 s: 60 more take 18 s
  assert p.update(50) is None  # 3 s after the last line
  assert p.update(100) == "Evaluating: 100/100 (100%), ETA 0m00s"


def test_a_second_scan_reuses_the_verdicts_of_unchanged_files(tmp_path, monkeypatch):
  monkeypatch.setenv("FOCALNET_JAX_CACHE_DIR", str(tmp_path / "cache"))
  for cls in ("a", "b"):
    os.makedirs(tmp_path / "data" / "train" / cls)
    for i in range(3):
      Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / "data" / "train" / cls / f"{i}.png")
  (tmp_path / "data" / "train" / "b" / "2.png").write_bytes(b"not a png")
  checked = []
  real_check = folder.check_image
  monkeypatch.setattr(folder, "check_image", lambda p: checked.append(p) or real_check(p))
  first = folder.scan_split.__wrapped__(str(tmp_path / "data"), "train", "skip")
  assert len(checked) == 6 and len(first.paths) == 5 and len(first.skipped) == 1
  checked.clear()
  second = folder.scan_split.__wrapped__(str(tmp_path / "data"), "train", "skip")
  assert checked == [] and list(second.paths) == list(first.paths) and second.skipped == first.skipped
  # A file that changes (size or time) is checked again; the others are not.
  Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(tmp_path / "data" / "train" / "b" / "2.png")
  third = folder.scan_split.__wrapped__(str(tmp_path / "data"), "train", "skip")
  assert [os.path.basename(p) for p in checked] == ["2.png"] and len(third.paths) == 6
