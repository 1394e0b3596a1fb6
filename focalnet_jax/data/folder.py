"""Image folders laid out as root/<split>/<class>/<image>: listing, labels and validation.

Class names are the sub-directories of the train split, sorted alphabetically; their order
gives the label ids, and every other split is labelled with the same map. Hidden entries (a
leading '.', e.g. `.ipynb_checkpoints`, `.DS_Store`, `.Trash-1000`) are never splits, classes
or images. Images are files with a known extension (jpg, jpeg, png, bmp, gif, webp; any case)
found recursively inside a class directory; a symlinked directory is followed only if it
resolves inside that class directory and was not visited yet (a link loop, or a link into
another class, would relabel images). A file or directory name that is not valid UTF-8 (which
TensorFlow cannot open) is an error naming it.

Images are checked up front so that a bad file is reported by name, and the check agrees with
the decoder training uses (TensorFlow's): the header must parse (PIL); an RGB or grayscale
JPEG must end with its end-of-image marker (else it is decoded in full to tell a truncated
file from one with trailing bytes); a PNG is decoded in full; every other file (BMP, GIF,
WebP, CMYK JPEG, which are rare and usually small) is decoded by both PIL and TensorFlow and
the pixels compared, which catches the variants TensorFlow cannot decode (1-bit BMP, animated
WebP) or decodes wrongly without an error (palette BMP). Bad files are skipped and counted,
with a warning naming the first few (`corrupt_images='skip'`), or raise naming the file
(`'error'`). TF is imported only for those rarer formats. Verdicts are cached on disk
(`focalnet_jax.cache`, keyed by path, size and modification time), so a second scan of a large
folder lists it without decoding; a long check logs its progress with an ETA.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import logging
import os

import numpy as np

from focalnet_jax import atomic
from focalnet_jax.cache import cache_dir
from focalnet_jax.data.eval_images import to_rgb
from focalnet_jax.progress import Progress

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
_JPEG_EOI = b"\xff\xd9"
_JPEG_TAIL_BYTES = 64  # where the end-of-image marker is looked for (some files pad after it)
_NAMES_IN_WARNING = 5
_MAX_MEAN_PIXEL_DIFF = 3.0  # PIL vs TF on the same file: decoder rounding (CMYK JPEG: ~0.5) passes
_CHECK_VERSION = 2  # bump when check_image's verdicts change: cached verdicts are then ignored


@dataclasses.dataclass(frozen=True)
class FolderSplit:
  """The readable images of one split: paths and labels aligned, sorted by (class, path)."""
  paths: np.ndarray  # str
  labels: np.ndarray  # int32
  class_names: tuple[str, ...]
  skipped: tuple[str, ...]  # corrupt files left out


def _checked_name(directory: str, name: str) -> str:
  """`name`, if valid UTF-8; os.listdir hands undecodable bytes over as surrogates."""
  try:
    name.encode("utf-8")
  except UnicodeEncodeError:
    raise ValueError(
        f"{os.fsencode(os.path.join(directory, name))!r} has a name that is not valid UTF-8, which "
        "TensorFlow cannot open. Rename it (e.g. `convmv -f latin1 -t utf8 --notest -r DIR`).") from None
  return name


def _subdirs(directory: str) -> list[str]:
  """Sorted visible sub-directory names of `directory`."""
  return sorted(_checked_name(directory, d) for d in os.listdir(directory)
                if not d.startswith(".") and os.path.isdir(os.path.join(directory, d)))


def class_names(root: str, split: str) -> tuple[str, ...]:
  """Sorted class directory names of root/<split> (hidden ones left out); errors name the path."""
  split_dir = os.path.join(root, split)
  if not os.path.isdir(root):
    raise ValueError(f"Image folder {root!r} does not exist.")
  if not os.path.isdir(split_dir):
    raise ValueError(f"Split directory {split_dir!r} does not exist (splits found in {root!r}: {_subdirs(root)}). "
                     "Expected the layout root/<split>/<class>/<image>.")
  names = tuple(_subdirs(split_dir))
  if not names:
    raise ValueError(f"No class directories in {split_dir!r}. Expected the layout root/<split>/<class>/<image>.")
  return names


def _list_images(class_dir: str) -> list[str]:
  """Visible image files under `class_dir`; symlinked directories only inside it, each once."""
  top = os.path.realpath(class_dir)
  seen = {top}
  found = []
  for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
    keep = []
    for d in sorted(dirnames):
      if d.startswith("."):
        continue
      real = os.path.realpath(os.path.join(dirpath, _checked_name(dirpath, d)))
      if real in seen:
        continue
      if not (real + os.sep).startswith(top + os.sep):
        logging.warning("Not following %s: it links outside its class directory %s (to %s).",
                        os.path.join(dirpath, d), class_dir, real)
        continue
      seen.add(real)
      keep.append(d)
    dirnames[:] = keep  # os.walk descends only into these
    found.extend(os.path.join(dirpath, _checked_name(dirpath, f)) for f in sorted(filenames)
                 if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
  return found


def _tf_disagrees(path: str, reference: np.ndarray, fmt: str) -> str | None:
  """Why TensorFlow's decoder (the one training uses) cannot be trusted with this file, if so."""
  from focalnet_jax.data.tf_import import import_tf  # only for the rarer formats

  tf = import_tf()
  try:
    img = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False, dtype=tf.uint8).numpy()
  except Exception as e:  # noqa: BLE001 - tf raises InvalidArgumentError and others
    cause = str(e).split("}}")[-1].strip().splitlines()[0][:120] if str(e) else ""
    return f"TensorFlow, which training decodes with, cannot decode this {fmt} file ({cause}); convert it to PNG"
  if img.shape != reference.shape or np.abs(img.astype(np.int16) - reference).mean() > _MAX_MEAN_PIXEL_DIFF:
    return (f"TensorFlow, which training decodes with, decodes this {fmt} file to other pixels than PIL "
            "does (e.g. a palette BMP); convert it to PNG")
  return None


def check_image(path: str) -> str | None:
  """None if `path` is an image training decodes correctly, else the reason it is not."""
  from PIL import Image  # PIL only when folders are used
  try:
    with Image.open(path) as im:
      fmt, common = im.format, im.format == "PNG" or (im.format == "JPEG" and im.mode in ("L", "RGB"))
      if fmt == "JPEG" and common:
        with open(path, "rb") as f:
          f.seek(max(0, os.path.getsize(path) - _JPEG_TAIL_BYTES))
          if _JPEG_EOI in f.read():
            return None
      im.load()  # full decode: raises on truncated or corrupt data
      if common:
        return None
      reference = np.asarray(to_rgb(im), np.int16)
  except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
    return f"{type(e).__name__}: {e}"
  return _tf_disagrees(path, reference, fmt)


def _scan_cache_path(split_dir: str) -> str:
  key = hashlib.sha1(f"{_CHECK_VERSION}:{split_dir}".encode()).hexdigest()[:20]
  return os.path.join(cache_dir(), "folder_scans", f"{key}.json")


def _stat_key(path: str) -> list[int]:
  st = os.stat(path)
  return [st.st_size, st.st_mtime_ns]


def _load_verdicts(cache_path: str) -> dict:
  try:
    with open(cache_path) as f:
      return json.load(f)
  except (OSError, ValueError):  # no cache yet, or a damaged one: check afresh
    return {}


def _save_verdicts(cache_path: str, verdicts: dict) -> None:
  """Atomically (write beside, rename); a cache that cannot be written is only slower next time."""
  try:
    atomic.write_json(cache_path, verdicts, indent=None)
  except OSError as e:
    logging.info("Folder scan cache not written (%s); the next scan checks every image again.", e)


def _check_all(paths: list[str], split_dir: str) -> list[str | None]:
  """The check of every image, reusing the verdicts cached on disk for files whose size and
  modification time are unchanged (a 50,000-image folder is then listed, not decoded, again)."""
  cache_path = _scan_cache_path(split_dir)
  cached = _load_verdicts(cache_path)
  stats = [_stat_key(p) for p in paths]
  verdicts: list = [None] * len(paths)
  todo = []
  for i, (path, stat) in enumerate(zip(paths, stats)):
    hit = cached.get(path)
    if hit is not None and hit[:2] == stat:
      verdicts[i] = hit[2]
    else:
      todo.append(i)
  if todo:
    progress = Progress(f"Checking images in {split_dir}", len(todo))
    # PIL releases the GIL while reading and decoding, so threads help on large folders.
    workers = min(32, (os.cpu_count() or 1) * 4)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      for n, (i, why) in enumerate(zip(todo, pool.map(check_image, [paths[i] for i in todo], chunksize=64)), 1):
        verdicts[i] = why
        progress.update(n)
    _save_verdicts(cache_path, {p: [*st, v] for p, st, v in zip(paths, stats, verdicts)})
  return verdicts


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

  problems = _check_all(paths, os.path.join(root, split))
  bad = [(p, why) for p, why in zip(paths, problems) if why is not None]
  if bad and corrupt_images == "error":
    path, why = bad[0]
    raise ValueError(f"Corrupt or undecodable image {path!r} ({why}); {len(bad)} bad file(s) in "
                     f"{os.path.join(root, split)!r}. "
                     "Remove them, or set config.corrupt_images='skip' to leave them out.")
  if bad:
    logging.warning("Skipping %d corrupt or undecodable image(s) in %s, e.g. %s", len(bad),
                    os.path.join(root, split), "; ".join(f"{p} ({why})" for p, why in bad[:_NAMES_IN_WARNING]))
  keep = np.array([why is None for why in problems], bool)
  paths_np = np.array(paths, dtype=object)[keep].astype(str) if paths else np.array([], str)
  labels_np = np.array(labels, np.int32)[keep]
  if len(paths_np) == 0:
    raise ValueError(f"No readable images in {os.path.join(root, split)!r}.")
  return FolderSplit(paths_np, labels_np, names, tuple(p for p, _ in bad))


def labelled_split(root: str, split: str, train_split: str, corrupt_images: str,
                   label_names: tuple[str, ...] | None = None) -> FolderSplit:
  """`split` labelled with the class ids of `label_names` (e.g. a checkpoint's label space), else
  of `train_split`'s class directories; the split's classes must be among them."""
  data = scan_split(root, split, corrupt_images)
  if label_names is None:
    if split == train_split:
      return data
    label_names = class_names(os.path.abspath(os.path.expanduser(root)), train_split)
    where = f"the train split {train_split!r}"
  else:
    label_names = tuple(label_names)
    where = "the model's class names"
  if tuple(data.class_names) == label_names:
    return data
  index = {n: i for i, n in enumerate(label_names)}
  unknown = [n for n in data.class_names if n not in index]
  if unknown:
    raise ValueError(f"Classes {unknown[:5]} of split {split!r} in {root!r} are not in {where}, "
                     "so they have no label id.")
  remap = np.array([index[n] for n in data.class_names], np.int32)
  return dataclasses.replace(data, labels=remap[data.labels], class_names=label_names)
