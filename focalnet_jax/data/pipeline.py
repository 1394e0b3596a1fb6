"""The train and eval input pipelines (tf.data), the contract the trainer relies on.

`config.dataset` picks the source: a TFDS name ('imagenet2012', 'cifar10:3.0.2'),
'folder:/path/to/root' (root/<split>/<class>/<image>) or 'digits' (scikit-learn's digits,
written once as an image folder under data_dir). ('synthetic' and in-memory arrays are
TF-free datasets of their own; `focalnet_jax.data.from_config` picks among all of them.)

Train batches are a pure function of (config, step, process): epoch e = step // steps_per_epoch
is shuffled from a seed of (seed, e, process), each example is augmented with stateless random
ops seeded by (seed, e, process, position in the epoch), and tf.data runs deterministically; the
host decodes and crops, and the train step does the rest of the recipe (`device_augment`), keyed
by (seed, step, position in the batch).
Resuming at `start_step` starts inside epoch e at the right position, so a resumed run sees
exactly the batches an uninterrupted one would. Epochs drop their last partial batch.

Eval yields every example of the split exactly once over all processes, in batches padded
with masked examples, and every process yields the same number of batches.

TensorFlow is imported on first use, not with this module.
"""
from __future__ import annotations

import functools
import logging
import threading
from typing import Any, Iterator

import numpy as np

from focalnet_jax.data.batches import local_batch
from focalnet_jax.data.info import DatasetInfo
from focalnet_jax.data.tf_import import import_tf


def _options(config):
  tf = import_tf()
  opts = tf.data.Options()
  opts.deterministic = True  # needed for reproducible, resumable batches
  opts.threading.max_intra_op_parallelism = 1  # parallelism comes from the parallel map instead
  if config.data_threads:
    opts.threading.private_threadpool_size = config.data_threads
  opts.experimental_optimization.map_parallelization = True
  return opts


def _source(config):
  """The TFDS or folder source for config.dataset."""
  import_tf()
  from focalnet_jax.data import digits, sources
  dataset = config.dataset
  if dataset == "digits":
    root = digits.prepare_digits(config.data_dir, config.digits_split_seed)
    return sources.FolderSource(root, config.train_split, config.corrupt_images)
  if dataset.startswith("folder:"):
    return sources.FolderSource(sources.folder_root(dataset), config.train_split, config.corrupt_images,
                                label_names=tuple(config.class_names) if config.class_names else None)
  return sources.TfdsSource(dataset, config.data_dir, _options(config))


def get_info(config) -> DatasetInfo:
  """Class count and names, and the sizes of config.train_split and config.eval_split (an empty
  train_split: evaluation only, the train split is neither listed nor opened)."""
  src = _source(config)
  names = src.class_names()
  num_train = src.num_examples(config.train_split) if config.train_split else 0
  return DatasetInfo(len(names), num_train, src.num_examples(config.eval_split), names)


def _crop_kwargs(config) -> dict[str, Any]:
  a = config.aug
  return dict(image_size=config.image_size, interpolation=config.interpolation, scale=tuple(a.rrc_scale),
              ratio=tuple(a.rrc_ratio))


def _plain(tf, fn):
  """`fn` exempt from autograph: it is plain TF already, and converting parses source (slow, and
  not safe while another thread does the same)."""
  return tf.autograph.experimental.do_not_convert(fn)


def _culprit(paths: list[str]) -> str | None:
  """The first of `paths` that TF cannot decode (to name it when a batch fails)."""
  tf = import_tf()
  for p in paths:
    try:
      tf.io.decode_image(tf.io.read_file(p), channels=3, expand_animations=False)
    except tf.errors.OpError:
      return p
  return None


def _decode_error(err, paths: list[str]) -> ValueError:
  bad = _culprit(paths) if paths else None
  where = f"image {bad!r} cannot be decoded" if bad else "an image in this batch cannot be decoded"
  return ValueError(f"Input pipeline failed: {where} ({type(err).__name__}: {str(err).splitlines()[0]}). "
                    "Remove or repair the file.")


@functools.lru_cache(maxsize=8)
def _train_example_fn(reads_files: bool, kwargs: tuple):
  """(position, bytes or path, epoch seed) -> uint8 random resized crop, traced once per setting
  (epochs and iterators reuse it)."""
  tf = import_tf()
  from focalnet_jax.data import augment

  @tf.function(autograph=False, input_signature=[tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.string),
                                                 tf.TensorSpec([2], tf.int32)])
  def fn(pos, data, base):
    if reads_files:
      data = tf.io.read_file(data)
    return augment.train_crop(data, tf.random.experimental.stateless_fold_in(base, pos), **dict(kwargs))
  return fn


class _Background:
  """Runs fn(*args) on a daemon thread (TF releases the GIL); `result()` waits for it."""

  def __init__(self, fn, *args):
    self._out = None
    self._thread = threading.Thread(target=self._run, args=(fn, args), daemon=True)
    self._thread.start()

  def _run(self, fn, args):
    try:
      self._out = (True, fn(*args))
    except BaseException as e:  # re-raised in the consumer's thread
      self._out = (False, e)

  def result(self):
    self._thread.join()
    ok, value = self._out
    if not ok:
      raise value
    return value


def train_iterator(config, *, start_step: int = 0, process_index: int = 0,
                   process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Infinite train batches {'image': uint8 (B, S, S, 3), 'label': i32 (B,)}, B = batch_size / processes:
  random resized crops, which the train step augments further and normalises (`device_augment`).

  The batch at step t depends only on (config, t, process_index, process_count); see module doc.
  """
  tf = import_tf()
  batch = local_batch(config.batch_size, process_count)
  src = _source(config)
  num_train = src.num_examples(config.train_split)
  steps_per_epoch = num_train // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"batch_size {config.batch_size} exceeds the {num_train} train examples.")
  n_take = steps_per_epoch * batch
  opts, kwargs = _options(config), _crop_kwargs(config)
  parallel = config.data_threads or tf.data.AUTOTUNE

  transform_one = _train_example_fn(src.reads_files, tuple(sorted(kwargs.items())))

  def build_epoch(epoch: int, offset: int):
    """The epoch's batches from step `offset` on (built on the caller's thread: TFDS is not thread-safe)."""
    base = tf.random.experimental.stateless_fold_in(tf.constant([config.seed, epoch], tf.int64), process_index)
    if src.reads_files:
      records = src.train_epoch(config.seed, epoch, process_index, process_count, n_take, offset * batch)
    else:
      records = src.train_epoch(config.train_split, config.seed, epoch, process_index, process_count, n_take,
                                offset * batch, config.shuffle_buffer)
    ds = records.map(_plain(tf, lambda pos, data, label: (transform_one(pos, data, base), label)),
                     num_parallel_calls=parallel, deterministic=True)
    return ds.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE).with_options(opts)

  def start(ds):
    """An iterator over `ds` and its first batch (or the error getting it)."""
    it = ds.as_numpy_iterator()
    try:
      return it, next(it)
    except tf.errors.OpError as e:
      return it, e

  # Each epoch is its own pipeline; the next one is started (its iterator created, which
  # optimises the graph, about a second, and its first batch computed) in the background
  # while this one runs, so that epoch boundaries stall training less.
  epoch, offset = divmod(start_step, steps_per_epoch)
  upcoming = _Background(start, build_epoch(epoch, offset))
  while True:
    it, first = upcoming.result()
    upcoming = _Background(start, build_epoch(epoch + 1, 0))
    for step_in_epoch in range(offset, steps_per_epoch):
      try:
        if isinstance(first, Exception):
          raise first
        image, label = first if step_in_epoch == offset else next(it)
      except tf.errors.OpError as e:
        paths = []
        if src.reads_files:
          positions = np.arange(step_in_epoch * batch, (step_in_epoch + 1) * batch)
          paths = src.train_paths(config.seed, epoch, process_index, process_count, n_take, positions)
        raise _decode_error(e, paths) from e
      yield {"image": image, "label": label}
    epoch, offset = epoch + 1, 0


def eval_iterator(config, *, process_index: int = 0, process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """One pass over config.eval_split: {'image', 'label', 'mask'} batches of eval_batch_size / processes.

  For imagenet2012_real, 'label' is the original label and 'real' the multi-hot ReaL labels.

  Process p gets an even share of the split; the last batches are padded with mask-0 examples
  so that every process yields ceil(largest share / batch) batches.
  """
  tf = import_tf()
  from focalnet_jax.data import augment
  batch = local_batch(config.eval_batch_size, process_count)
  src = _source(config)
  records, n_local, n_most = src.eval_records(config.eval_split, process_index, process_count)
  num_batches = -(-n_most // batch)

  def transform(data, label, *real):
    if src.reads_files:
      data = tf.io.read_file(data)
    img = augment.eval_transform(data, config.image_size, config.crop_ratio, config.interpolation)
    return (augment.normalize(img, config.aug.mean, config.aug.std), label, *real)

  ds = records.take(n_local).map(_plain(tf, transform), num_parallel_calls=config.data_threads or tf.data.AUTOTUNE,
                                 deterministic=True)
  ds = ds.batch(batch).prefetch(tf.data.AUTOTUNE).with_options(_options(config))
  it = ds.as_numpy_iterator()
  size = config.image_size
  seen = 0
  real_classes = len(src.class_names()) if src.has_real_labels else 0
  for i in range(num_batches):
    image = np.zeros((batch, size, size, 3), np.float32)
    label = np.zeros((batch,), np.int32)
    mask = np.zeros((batch,), np.float32)
    real = np.zeros((batch, real_classes), np.float32)
    if seen < n_local:
      try:
        got_image, got_label, *got_real = next(it)
      except StopIteration:
        got_image, got_label, got_real = image[:0], label[:0], [real[:0]] if real_classes else []
        logging.warning("Eval split %r gave %d examples, fewer than the %d expected.", config.eval_split,
                        seen, n_local)
        n_local = seen
      except tf.errors.OpError as e:
        paths = []
        if src.reads_files:
          positions = np.arange(i * batch, min((i + 1) * batch, n_local))
          paths = src.eval_paths(config.eval_split, process_index, process_count, positions)
        raise _decode_error(e, paths) from e
      n = len(got_label)
      image[:n], label[:n], mask[:n] = got_image, got_label, 1.0
      if real_classes:
        real[:n] = got_real[0]
      seen += n
    out = {"image": image, "label": label, "mask": mask}
    if real_classes:
      out["real"] = real  # multi-hot ReaL labels (imagenet2012_real)
    yield out
