"""The PyTorch reference implementations (timm, HF transformers), imported lazily.

torchvision's CPU wheel only imports after two of its C++ operators are registered, and both timm
and transformers import torchvision; the benchmark module's idempotent registration is used for both.
"""
import pytest


def import_torch():
  return pytest.importorskip("torch")


def _register_torchvision_stubs():
  import_torch()
  from focalnet_jax.tools.benchmark import register_torchvision_stubs

  register_torchvision_stubs()


def import_timm():
  _register_torchvision_stubs()
  return pytest.importorskip("timm")


def import_transformers():
  _register_torchvision_stubs()
  return pytest.importorskip("transformers")
