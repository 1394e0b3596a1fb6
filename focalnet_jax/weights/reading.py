"""Reading published weight files into a flat {key: float32 numpy array} state dict.

`.safetensors` files need only the `safetensors` package; `.pth`/`.pt`/`.bin` files need torch.
"""
from __future__ import annotations

import json
import os
import struct
import zipfile
from typing import Any, Mapping

import numpy as np

# Official and timm checkpoints wrap the state dict under one of these keys.
_WRAPPER_KEYS = ("model", "state_dict")
# Weight files inside a downloaded HF hub snapshot (timm or transformers), in order of preference.
_SNAPSHOT_FILES = ("model.safetensors", "pytorch_model.bin")


def load_checkpoint(path: str | os.PathLike, trust_pickle: bool = False) -> dict[str, np.ndarray]:
  """Reads a `.safetensors`, `.pth`, `.pt` or `.bin` file into a flat {key: float32 array}.

  `path` may also be a downloaded HF hub snapshot directory holding `model.safetensors` or
  `pytorch_model.bin`. `.safetensors` needs only the `safetensors` package. The pickle formats
  need torch and are read with `weights_only=True`; `trust_pickle=True` lifts that restriction
  (official training checkpoints may also pickle their yacs config): use it only for files you
  trust.
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    found = [os.path.join(path, f) for f in _SNAPSHOT_FILES if os.path.isfile(os.path.join(path, f))]
    if not found:
      raise FileNotFoundError(
          f"{path!r} is a directory without {' or '.join(_SNAPSHOT_FILES)}; pass the weight file itself."
      )
    path = found[0]
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Checkpoint file {path!r} does not exist.")
  ext = _format_of(path, os.path.splitext(path)[1].lower())  # what the bytes are, whatever the name says
  incomplete = _incomplete(path, ext)
  if incomplete:
    raise ValueError(
        f"{path!r} is incomplete or damaged ({incomplete}): an interrupted download or copy. Download it "
        "again (and compare its size or checksum with the published one).")
  if ext == ".safetensors":
    from safetensors.numpy import load_file

    try:
      return unwrap_state_dict(load_file(path))
    except TypeError:  # bfloat16 tensors, which numpy cannot name; JAX's reader can
      from safetensors.flax import load_file as load_file_jax

      return unwrap_state_dict(load_file_jax(path))
  if ext not in (".pth", ".pt", ".bin", ".ckpt"):
    raise ValueError(
        f"Cannot read {path!r}: expected a .safetensors, .pth, .pt or .bin file (got {ext!r})."
    )
  try:
    import torch
  except ImportError as e:
    raise ImportError(
        f"Reading {path!r} ({ext}) needs PyTorch, which is not installed. Install torch (CPU is "
        "enough: pip install torch --index-url https://download.pytorch.org/whl/cpu), or use the "
        ".safetensors file of the same weights (timm and HF publish them), which needs no torch."
    ) from e
  try:
    obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
  except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError and others
    if trust_pickle:
      raise
    if "Weights only load failed" not in str(e):  # not a pickle of more than tensors: damaged
      raise ValueError(f"Could not read {path!r} ({type(e).__name__}: {str(e).splitlines()[0][:200]}). It is "
                       "damaged or not a PyTorch checkpoint; download it again.") from e
    raise ValueError(
        f"Could not read {path!r} with torch.load(weights_only=True): {type(e).__name__}: {e}\n"
        "The file pickles more than tensors (official training checkpoints also hold their "
        "config). If you trust the file, pass trust_pickle=True (CLI: --trust-pickle)."
    ) from e
  return unwrap_state_dict(obj)


def _format_of(path: str, ext: str) -> str:
  """The file's format read off its first bytes ('.safetensors' or '.pth'), so a file misnamed
  (safetensors saved as .pth) is read as what it is; a web page or other non-weight file is named
  as such (never advice to trust its pickle)."""
  with open(path, "rb") as f:
    head = f.read(512)
  if len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < 100_000_000:
    return ".safetensors"
  if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # torch's zip format, or a legacy pickle
    return ".pth" if ext not in (".pt", ".bin", ".ckpt") else ext
  text = head.lstrip().lower()
  if text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<!--")):
    raise ValueError(f"{path!r} is a web page (HTML), not a weight file: the download link returned a page "
                     "(a login, a redirect or a 'cannot scan this file' notice). Download the file itself, e.g. "
                     "with `hf download <repo> <file>` or the link behind the page's button.")
  if text.startswith(b"version https://git-lfs"):
    raise ValueError(f"{path!r} is a Git LFS pointer (a text stub), not the weights: the repository was cloned "
                     "without LFS. Run `git lfs pull` in it, or download the file itself.")
  if len(head) >= 16 and ext in (".safetensors", ".pth", ".pt", ".bin", ".ckpt"):  # shorter: _incomplete says
    raise ValueError(f"{path!r} is not a weight file (it starts with {head[:16]!r}, neither a safetensors header "
                     "nor a PyTorch checkpoint). Download the weights again.")
  return ext


def _incomplete(path: str, ext: str) -> str | None:
  """Why a weight file is cut short, if it visibly is (its own header says how long it must be)."""
  size = os.path.getsize(path)
  if size == 0:
    return "it is empty"
  with open(path, "rb") as f:
    head = f.read(8)
    if ext == ".safetensors":
      if len(head) < 8:
        return f"{size} bytes, shorter than a safetensors header"
      (n,) = struct.unpack("<Q", head)
      if 8 + n > size:
        return f"its header alone needs {8 + n} bytes; the file has {size}"
      try:
        header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
      except (ValueError, KeyError, TypeError, IndexError) as e:
        return f"unreadable header: {type(e).__name__}"
      return f"its tensors need {8 + n + end} bytes; the file has {size}" if 8 + n + end > size else None
  if head.startswith(b"PK\x03\x04") and not zipfile.is_zipfile(path):  # torch's zip format, cut short
    return f"{size} bytes, a zip archive without its central directory"
  return None


def unwrap_state_dict(obj: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The flat state dict inside `obj` ({'model': sd}, {'state_dict': sd} or sd itself),
  as float32 numpy arrays, with a DistributedDataParallel 'module.' prefix removed."""
  if not isinstance(obj, Mapping):
    raise ValueError(f"Expected a state dict (a mapping of names to tensors), got {type(obj).__name__}.")
  for key in _WRAPPER_KEYS:
    if isinstance(obj.get(key), Mapping):
      obj = obj[key]
      break
  out = {}
  for key, value in obj.items():
    if not hasattr(value, "shape"):
      continue  # scalars and metadata saved next to the weights (epoch, config, ...)
    out[key] = _to_numpy(value)
  if out and all(k.startswith("module.") for k in out):
    out = {k[len("module.") :]: v for k, v in out.items()}
  return out


def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor; numpy() cannot take bfloat16, so go via float32
    value = value.detach().cpu()
    value = value.float() if value.is_floating_point() else value
    value = value.numpy()
  value = np.asarray(value)
  floating = np.issubdtype(value.dtype, np.floating) or value.dtype.name == "bfloat16"
  return value.astype(np.float32, copy=False) if floating else value  # no copy of float32 weights
