"""Atomic writes: a file (or directory) any tool writes is either the old one or the whole new one.

Every writer goes through `replacing(path)`: it writes into a temporary name in the same
directory, flushes it to disk (fsync) and moves it onto `path` with `os.replace` (a directory:
two renames). A failure (a full disk, a read-only directory, an exception in the writer) removes
the temporary and raises `WriteFailed` naming the file and saying the old one is intact, so a
truncated file never sits under the real name.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from typing import Any, Iterator


class WriteFailed(OSError):
  """A write that left `path` as it was (the message says why and what is left)."""


def _remove(path: str) -> None:
  if os.path.isdir(path) and not os.path.islink(path):
    shutil.rmtree(path, ignore_errors=True)
  else:
    with contextlib.suppress(OSError):
      os.remove(path)


def _fsync(path: str) -> None:
  """Flushes a file, or every file of a directory, to disk (best effort where the FS refuses)."""
  paths = [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs] if os.path.isdir(path) else [path]
  for p in paths:
    fd = os.open(p, os.O_RDONLY)
    try:
      os.fsync(fd)
    except OSError as e:
      if e.errno not in (errno.EINVAL, errno.ENOTSUP):  # filesystems without fsync (some FUSE, pipes)
        raise
    finally:
      os.close(fd)


def _failed(path: str, existed: bool, e: BaseException) -> WriteFailed:
  why = f"{type(e).__name__}: {e}"
  if isinstance(e, OSError) and e.errno == errno.ENOSPC:
    why += "; free disk space and rerun"
  kept = f"the existing {path} is intact" if existed else "nothing was written under that name"
  return WriteFailed(getattr(e, "errno", None) or errno.EIO, f"Writing {path} failed ({why}); {kept}.")


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[str]:
  """Yields a temporary path beside `path` to write a file or a directory into; on a normal exit
  it is synced and moved onto `path` (replacing a file or directory there), on an error removed.
  The parent directory is created."""
  path = os.path.abspath(os.fspath(path))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  root, ext = os.path.splitext(path)
  tmp = f"{root}.tmp-{os.getpid()}{ext}"  # same directory (so os.replace is a rename), same extension

  existed = os.path.lexists(path)
  _remove(tmp)
  try:
    yield tmp
    _fsync(tmp)
    if os.path.isdir(tmp) and existed:
      old = f"{path}.old-{os.getpid()}"
      os.rename(path, old)  # a directory cannot be os.replace'd onto a non-empty one: two renames
      os.rename(tmp, path)
      _remove(old)
    else:
      if os.path.isdir(path) and not os.path.islink(path):
        _remove(path)  # a file replacing a directory (rare: an output path reused)
      os.replace(tmp, path)
  except Exception as e:
    _remove(tmp)
    raise _failed(path, existed, e) from e
  except BaseException:  # Ctrl-C: clean up, never a half file under the name
    _remove(tmp)
    raise


def write_bytes(path: str | os.PathLike, data: bytes) -> str:
  """Writes `data` to `path` atomically; returns the absolute path."""
  with replacing(path) as tmp:
    with open(tmp, "wb") as f:
      f.write(data)
  return os.path.abspath(os.fspath(path))


def write_text(path: str | os.PathLike, text: str, mode: int | None = None) -> str:
  """Writes `text` (UTF-8) to `path` atomically, with permission bits `mode` if given."""
  with replacing(path) as tmp:
    with open(tmp, "w", encoding="utf-8", newline="") as f:
      f.write(text)
    if mode is not None:
      os.chmod(tmp, mode)
  return os.path.abspath(os.fspath(path))


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> str:
  """Writes `obj` as JSON to `path` atomically."""
  return write_text(path, json.dumps(obj, indent=indent))
