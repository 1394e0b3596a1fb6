"""Shared by the ablation sweeps: the base config at either scale and the point format.

A sweep point is `{'name': str, 'overrides': {dotted config field: value}}`. A point may give
other overrides for the quickstart scale (`quickstart=...`), for the few ablations whose values
depend on the network's shape (e.g. depths: quickstart models have 3 stages, ImageNet ones 4).
"""
from __future__ import annotations

import re
from typing import Any

import ml_collections

from configs import focalnet_t, quickstart as quickstart_config

QUICKSTART = "quickstart"  # the `arg` that selects the quickstart scale
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # a point's name is also a directory name


def is_quickstart(arg: str | None) -> bool:
  """True for 'quickstart', False for None or ''; any other `arg` is an error."""
  if arg in (None, ""):
    return False
  if arg == QUICKSTART:
    return True
  raise ValueError(f"Unknown ablation config arg {arg!r}: use no arg (ImageNet scale) or ':{QUICKSTART}'.")


def base_config(arg: str | None) -> ml_collections.ConfigDict:
  """FocalNet-T's ImageNet recipe (configs/focalnet_t.py), or configs/quickstart.py's with 'quickstart'."""
  return quickstart_config.get_config() if is_quickstart(arg) else focalnet_t.get_config()


def point(name: str, overrides: dict[str, Any], quickstart: dict[str, Any] | None = None) -> dict[str, Any]:
  """One sweep point; `quickstart` replaces `overrides` at the quickstart scale when given."""
  if not _NAME.match(name):
    raise ValueError(f"Sweep point name {name!r} must be letters, digits, '_', '.' or '-' (it names a workdir).")
  return {"name": name, "overrides": dict(overrides), "quickstart_overrides": quickstart}


def resolve(arg: str | None, points: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """The points at the scale `arg` selects, as {'name', 'overrides'} dicts."""
  small = is_quickstart(arg)
  names = [p["name"] for p in points]
  if len(set(names)) != len(names):
    raise ValueError(f"Sweep point names must be unique: {names}.")
  return [{"name": p["name"],
           "overrides": dict(p["quickstart_overrides"] if small and p["quickstart_overrides"] is not None
                             else p["overrides"])}
          for p in points]
