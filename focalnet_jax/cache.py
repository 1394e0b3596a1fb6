"""Where focalnet_jax keeps what it can rebuild (compiled kernels, folder scans): one directory.

`$FOCALNET_JAX_CACHE_DIR` if set, else `$XDG_CACHE_HOME/focalnet_jax`, else
`~/.cache/focalnet_jax`. Everything in it may be deleted at any time.
"""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
  """The cache directory (not created here)."""
  if os.environ.get("FOCALNET_JAX_CACHE_DIR"):
    return Path(os.environ["FOCALNET_JAX_CACHE_DIR"])
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return Path(base) / "focalnet_jax"
