"""notebooks/quickstart.ipynb runs: its code cells, in order, on CPU without a network.

The notebook reads three environment variables that this test sets: the weights become a local
random-weight timm hub snapshot (timm's own `save_for_hf`, as the hub serves it), the digits run
trains one epoch, and its workdir is a temporary folder. Shell cells (the Colab install) are skipped.
"""
import json
import os
import sys

import matplotlib.figure

from torch_refs import import_timm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "quickstart.ipynb")


def code_cells(path):
  """The Python source of each code cell, in order; cells of shell commands ('!', '%') are left out."""
  with open(path) as f:
    nb = json.load(f)
  assert nb["nbformat"] == 4
  cells = []
  for cell in nb["cells"]:
    if cell["cell_type"] != "code":
      continue
    source = "".join(cell["source"])
    lines = [l.strip() for l in source.splitlines() if l.strip() and not l.strip().startswith("#")]
    if all(l.startswith(("!", "%")) for l in lines):
      continue
    assert not any(l.startswith(("!", "%")) for l in lines), f"a cell mixes Python and shell:\n{source}"
    cells.append(source)
  return cells


def test_the_install_cell_keeps_colabs_jax():
  with open(NOTEBOOK) as f:
    sources = ["".join(c["source"]) for c in json.load(f)["cells"] if c["cell_type"] == "code"]
  installs = [l for s in sources for l in s.splitlines() if l.startswith("!pip install")]
  assert any("--no-deps -e /content/focalnet_jax" in l for l in installs)
  assert not any("jax" in l.replace("focalnet_jax", "") for l in installs)  # never installs or pins jax


def test_notebook_runs_on_cpu_offline(tmp_path, monkeypatch):
  timm = import_timm()
  from timm.models import save_for_hf

  weights = tmp_path / "focalnet_tiny_srf.ms_in1k"
  save_for_hf(timm.create_model("focalnet_tiny_srf", pretrained=False), str(weights), safe_serialization=True)
  monkeypatch.setenv("FOCALNET_REPO", ROOT)
  monkeypatch.setenv("FOCALNET_NOTEBOOK_WEIGHTS", str(weights))
  monkeypatch.setenv("FOCALNET_NOTEBOOK_EPOCHS", "1")
  monkeypatch.setenv("FOCALNET_NOTEBOOK_WORKDIR", str(tmp_path / "run"))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setattr(sys, "path", list(sys.path))  # the notebook puts the checkout on the path
  monkeypatch.chdir(tmp_path)

  shown = []
  namespace = {"__name__": "__main__", "display": shown.append}  # Jupyter's builtin display
  for i, source in enumerate(code_cells(NOTEBOOK)):
    exec(compile(source, f"quickstart.ipynb code cell {i}", "exec"), namespace)

  assert namespace["info"].variant == "focalnet_tiny_srf" and namespace["info"].crop_ratio == 0.9
  assert namespace["images"].shape == (2, 224, 224, 3) and namespace["logits"].shape == (2, 1000)
  assert len(shown) == 3 and all(isinstance(f, matplotlib.figure.Figure) for f in shown)  # 2 photos, curves
  result = namespace["result"]
  assert result["step"] == 1437 // 64 and 0.0 <= result["top1"] <= 1.0  # one epoch of the 1,437 train digits
  assert os.path.isdir(tmp_path / "run" / "checkpoints")
  assert not os.path.exists(tmp_path / "runs")  # everything went to the workdir it was given
