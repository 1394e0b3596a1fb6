"""Image folders laid out as root/<split>/<class>/<image>: listing, labels and validation.

Class names are the sub-directories of the train split, sorted alphabetically; their order
gives the label ids, and every other split is labelled with the same map. Images are files
with a known extension (jpg, jpeg, png, bmp, gif, webp; any case) found recursively inside a
class directory.

Images are checked up front, cheaply, so that a corrupt file can be reported by name: the
header must parse (PIL), a JPEG must end with its end-of-image marker (else it is decoded in
full to tell a truncated file from one with trailing bytes), and other formats, which are
rare and usually small, are decoded in full. Bad files are skipped and counted, with a warning
naming the first few (`corrupt_images='skip'`), or raise naming the file (`'error'`). TF-free.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import logging
import os

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
_JPEG_EOI = b"\xff\xd9"
_JPEG_TAIL_BYTES = 64  # where the end-of-image marker is looked for (some files pad after it)
_NAMES_IN_WARNING = 5


@dataclasses.dataclass(frozen=True)
class FolderSplit:
  """The readable images of one split: paths and labels aligned, sorted by (class, path)."""
  paths: np.ndarray  # str
  labels: np.ndarray  # int32
  class_names: tuple[str, ...]
  skipped: tuple[str, ...]  # corrupt files left out


def class_names(root: str, split: str) -> tuple[str, ...]:
  """Sorted class directory names of root/<split>; errors name the path."""
  split_dir = os.path.join(root, split)
  if not os.path.isdir(root):
    raise ValueError(f"Image folder {root!r} does not exist.")
  if not os.path.isdir(split_dir):
    found = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    raise ValueError(f"Split directory {split_dir!r} does not exist (splits found in {root!r}: {found}). "
                     "Expected the layout root/<split>/<class>/<image>.")
  names = tuple(sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d))))
  if not names:
    raise ValueError(f"No class directories in {split_dir!r}. Expected the layout root/<split>/<class>/<image>.")
  return names


def _list_images(class_dir: str) -> list[str]:
  found = []
  for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
    dirnames.sort()
    found.extend(os.path.join(dirpath, f) for f in sorted(filenames)
                 if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
  return found


def check_image(path: str) -> str | None:
  """None if `path` looks like a readable image, else the reason it does not."""
  from PIL import Image  # PIL only when folders are used
  try:
    with Image.open(path) as im:
      fmt = im.format
      if fmt == "JPEG":
        with open(path, "rb") as f:
          f.seek(max(0, os.path.getsize(path) - _JPEG_TAIL_BYTES))
          if _JPEG_EOI in f.read():
            return None
      im.load()  # full decode: raises on truncated or corrupt data
    return None
  except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
    return f"{type(e).__name__}: {e}"


def _check_all(paths: list[str]) -> list[str | None]:
  # PIL releases the GIL while reading and decoding, so threads help on large folders.
  workers = min(32, (os.cpu_count() or 1) * 4)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    return list(pool.map(check_image, paths, chunksize=64))


@functools.lru_cache(maxsize=16)
def scan_split(root: str, split: str, corrupt_images: str) -> FolderSplit:
  """Lists and checks root/<split>, labelled by the train-split class map (see module doc).

  Cached per (root, split, mode) for the life of the process: `get_info`, `train_iterator` and
  `eval_iterator` share one scan.
  """
  if corrupt_images not in ("skip", "error"):
    raise ValueError(f"corrupt_images must be 'skip' or 'error', got {corrupt_images!r}")
  root = os.path.abspath(os.path.expanduser(root))
  names = class_names(root, split)
  paths, labels = [], []
  for label, name in enumerate(names):
    found = _list_images(os.path.join(root, split, name))
    if not found:
      raise ValueError(f"Class directory {os.path.join(root, split, name)!r} contains no images "
                       f"(extensions {', '.join(IMAGE_EXTENSIONS)}).")
    paths.extend(found)
    labels.extend([label] * len(found))

  problems = _check_all(paths)
  bad = [(p, why) for p, why in zip(paths, problems) if why is not None]
  if bad and corrupt_images == "error":
    path, why = bad[0]
    raise ValueError(f"Corrupt image {path!r} ({why}); {len(bad)} bad file(s) in {os.path.join(root, split)!r}. "
                     "Remove them, or set config.corrupt_images='skip' to leave them out.")
  if bad:
    logging.warning("Skipping %d corrupt image(s) in %s, e.g. %s", len(bad), os.path.join(root, split),
                    ", ".join(p for p, _ in bad[:_NAMES_IN_WARNING]))
  keep = np.array([why is None for why in problems], bool)
  paths_np = np.array(paths, dtype=object)[keep].astype(str) if paths else np.array([], str)
  labels_np = np.array(labels, np.int32)[keep]
  if len(paths_np) == 0:
    raise ValueError(f"No readable images in {os.path.join(root, split)!r}.")
  return FolderSplit(paths_np, labels_np, names, tuple(p for p, _ in bad))


def labelled_split(root: str, split: str, train_split: str, corrupt_images: str) -> FolderSplit:
  """`split` labelled with the class ids of `train_split` (its classes must be a subset)."""
  data = scan_split(root, split, corrupt_images)
  if split == train_split:
    return data
  train_names = class_names(os.path.abspath(os.path.expanduser(root)), train_split)
  index = {n: i for i, n in enumerate(train_names)}
  unknown = [n for n in data.class_names if n not in index]
  if unknown:
    raise ValueError(f"Classes {unknown[:5]} of split {split!r} in {root!r} are not in the train split "
                     f"{train_split!r}, so they have no label id.")
  remap = np.array([index[n] for n in data.class_names], np.int32)
  return dataclasses.replace(data, labels=remap[data.labels], class_names=train_names)
