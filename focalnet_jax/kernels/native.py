"""Builds and loads the compiled CPU kernels in `focalnet_jax/kernels/csrc` (XLA custom calls).

The kernels are C++ against the XLA FFI headers that ship with jaxlib. They are compiled on
first use with the machine's C++ compiler (`$CXX`, else `c++`/`g++`/`clang++`) for the CPU
they run on (`-march=native`), into a cache directory, and registered with JAX once per
process. The cache key covers the source, the compiler and its flags, the jaxlib version and
the CPU's feature flags, so a home directory shared by different machines gets one build per
kind of CPU. Builds are serialised with a file lock (several processes may start at once).

If there is no compiler, the build fails, or `FOCALNET_JAX_NATIVE=0` is set, `available()`
is False, a warning says why (once), and callers fall back to the pure-JAX implementations.

Environment:
  FOCALNET_JAX_NATIVE=0       never build or load the kernels.
  FOCALNET_JAX_CACHE_DIR=DIR  where builds go (default $XDG_CACHE_HOME/focalnet_jax or
                              ~/.cache/focalnet_jax).
  CXX                         the compiler.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import jax

from focalnet_jax.cache import cache_dir

SOURCE = Path(__file__).parent / "csrc" / "depthwise_conv.cc"
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC")
# XLA FFI target name -> symbol exported by the library.
TARGETS = {
    "focalnet_depthwise_conv_fwd": "FocalnetDepthwiseFwd",
    "focalnet_depthwise_conv_bwd": "FocalnetDepthwiseBwd",
}

_lock = threading.Lock()
_state: dict = {}
_registered: list = []


class NativeBuildError(RuntimeError):
  """The compiled kernels could not be built or loaded."""


def compiler() -> str | None:
  """The C++ compiler to use: $CXX if set, else the first of c++, g++, clang++ on PATH."""
  if os.environ.get("CXX"):
    return os.environ["CXX"]
  return next((c for c in ("c++", "g++", "clang++") if shutil.which(c)), None)


def _cpu_flags() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      return next((line for line in f if line.startswith(("flags", "Features"))), "")
  except OSError:
    return platform.processor()


def _build_key(cxx: str) -> str:
  try:
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
  except (OSError, subprocess.SubprocessError) as e:
    raise NativeBuildError(f"C++ compiler {cxx!r} does not run ({e}); set CXX to a working one.") from e
  import jaxlib

  h = hashlib.sha256()
  for part in (SOURCE.read_bytes(), cxx.encode(), version.encode(), " ".join(FLAGS).encode(),
               jaxlib.__version__.encode(), platform.machine().encode(), _cpu_flags().encode()):
    h.update(part)
    h.update(b"\0")
  return h.hexdigest()[:20]


def _compile(cxx: str, out: Path) -> None:
  include = jax.ffi.include_dir()
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
  os.close(fd)
  cmd = [cxx, *FLAGS, "-I", include, str(SOURCE), "-o", tmp]
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
      raise NativeBuildError(
          f"compiling {SOURCE.name} failed (exit {proc.returncode}): {' '.join(cmd)}\n"
          f"{proc.stderr[-4000:]}")
    os.replace(tmp, out)  # atomic: other processes see no library or a whole one
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def library_path() -> Path:
  """Builds the library if needed (under a file lock) and returns its path."""
  cxx = compiler()
  if cxx is None:
    raise NativeBuildError("no C++ compiler found (install g++ or clang++, or set CXX).")
  path = cache_dir() / f"focalnet_native_{_build_key(cxx)}.so"
  if path.exists():  # built before (possibly in a cache this process may only read)
    return path
  path.parent.mkdir(parents=True, exist_ok=True)
  import fcntl

  with open(path.with_suffix(".lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not path.exists():
      _compile(cxx, path)
  return path


def _load_and_register() -> None:
  path = library_path()
  try:
    lib = ctypes.cdll.LoadLibrary(str(path))
  except OSError:
    # A damaged cache entry (truncated file, wrong architecture): rebuild it once.
    path.unlink(missing_ok=True)
    path = library_path()
    try:
      lib = ctypes.cdll.LoadLibrary(str(path))
    except OSError as e:
      raise NativeBuildError(f"cannot load {path}: {e}") from e
  if not _registered:  # XLA keeps the first registration of a name for the whole process
    for target, symbol in TARGETS.items():
      jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    _registered.append(path)
  _state["path"] = path


def available() -> bool:
  """True once the kernels are built, loaded and registered (building them on first call)."""
  with _lock:
    if "ok" not in _state:
      if os.environ.get("FOCALNET_JAX_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        _state["ok"], _state["why"] = False, "disabled by FOCALNET_JAX_NATIVE=0"
      else:
        try:
          _load_and_register()
          _state["ok"] = True
        except (NativeBuildError, OSError, AttributeError, ImportError) as e:
          _state["ok"], _state["why"] = False, str(e)
          warnings.warn(
              f"focalnet_jax: the compiled CPU kernels are unavailable, using the pure-JAX "
              f"depthwise convolution instead: {e}", RuntimeWarning, stacklevel=2)
    return _state["ok"]


def why_unavailable() -> str | None:
  """Why `available()` is False (None when it is True or has not been asked yet)."""
  return _state.get("why")
