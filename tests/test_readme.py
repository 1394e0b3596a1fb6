"""The README is the front door: every Python snippet in it runs as pasted, in a fresh process, and
every `python ... --config FILE` and `-m MODULE` it names exists. A newcomer copies these first.

Snippets run in a scratch directory holding what a user would have beside them (`cat.jpg`, a photo
from scikit-learn); a hub id is served from an offline huggingface_hub cache holding random-weight
timm weights (that snippet needs timm, so it runs on the leg with the PyTorch references).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

import train_utils

README = os.path.join(train_utils.ROOT, "README.md")
MAX_LINES = 250


def readme() -> str:
  with open(README) as f:
    return f.read()


def python_snippets() -> list[str]:
  return re.findall(r"```python\n(.*?)```", readme(), flags=re.S)


def test_readme_is_a_front_door_not_a_notebook():
  lines = readme().splitlines()
  assert len(lines) <= MAX_LINES, f"README.md has {len(lines)} lines; keep it to {MAX_LINES} (details go to docs/)"
  assert python_snippets(), "the README shows how to use a model from Python"


def test_every_file_and_module_the_readme_names_exists():
  text = readme()
  for path in set(re.findall(r"--config (configs/[\w/.]+\.py)", text)):
    assert os.path.exists(os.path.join(train_utils.ROOT, path)), path
  for path in set(re.findall(r"\]\(((?:docs|notebooks)/[\w./-]+)\)", text)):
    assert os.path.exists(os.path.join(train_utils.ROOT, path.split("#")[0])), path
  for module in set(re.findall(r"python -m (focalnet_jax[\w.]*)", text)):
    parts = module.split(".")
    base = os.path.join(train_utils.ROOT, *parts)
    assert os.path.exists(base + ".py") or os.path.exists(os.path.join(base, "__main__.py")), module
  for script in set(re.findall(r"python ([a-z_]+\.py)\b", text)):
    assert os.path.exists(os.path.join(train_utils.ROOT, script)), script


def _offline_hub(home, hub_id: str) -> None:
  """A huggingface_hub cache under `home` holding random timm weights for `hub_id`."""
  from torch_refs import import_timm

  timm = import_timm()
  from timm.models import save_for_hf

  org, name = hub_id.split("/")
  revision = "0123456789abcdef0123456789abcdef01234567"
  repo = home / "hub" / f"models--{org}--{name}"
  save_for_hf(timm.create_model(name.split(".")[0], pretrained=False), str(repo / "snapshots" / revision),
              safe_serialization=True)
  (repo / "refs").mkdir()
  (repo / "refs" / "main").write_text(revision)


@pytest.mark.parametrize("index", range(len(python_snippets())))
def test_python_snippet_runs_as_pasted(index, tmp_path):
  code = python_snippets()[index]
  from PIL import Image
  from sklearn.datasets import load_sample_image

  Image.fromarray(np.asarray(load_sample_image("china.jpg"))).save(tmp_path / "cat.jpg")
  env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [train_utils.ROOT, env.get("PYTHONPATH")]))
  for hub_id in set(re.findall(r'from_pretrained\("([\w-]+/[\w.-]+)"\)', code)):
    pytest.importorskip("huggingface_hub", reason="a hub id needs huggingface_hub")
    _offline_hub(tmp_path / "hf_home", hub_id)
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
  run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
  assert run.returncode == 0, f"README snippet {index} failed:\n{code}\n{run.stderr[-3000:]}"
