"""The PyTorch reference implementations (timm, HF transformers), imported lazily.

torchvision's CPU wheel only imports after two of its C++ operators are registered, and timm
imports torchvision; `import_timm` does that registration once.
"""
import pytest

_REGISTERED = []


def import_torch():
  return pytest.importorskip("torch")


def import_timm():
  torch = import_torch()
  if not _REGISTERED:
    lib = torch.library.Library("torchvision", "FRAGMENT")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _REGISTERED.append(lib)  # the library must stay alive for the ops to stay registered
  return pytest.importorskip("timm")


def import_transformers():
  import_torch()
  return pytest.importorskip("transformers")
