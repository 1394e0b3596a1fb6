"""Where examples come from: a TFDS dataset or an image folder, sharded over processes.

A source hands the pipeline, per epoch, the process's examples in that epoch's order as a
tf.data.Dataset of (position in the epoch, encoded image bytes or a file path, label), and
for eval its share of the split. Shuffling is per epoch from a seed derived from (seed,
epoch, process), so an epoch's order never depends on what came before it. Imports TF.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow as tf

from focalnet_jax.data import folder

_IMAGENET_HINT = (
    "ImageNet-1K must be downloaded by hand: register at https://image-net.org/download-images, "
    "put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar into {data_dir}/downloads/manual/, then run\n"
    "  tfds build imagenet2012 --data_dir {data_dir}\n"
    "(about 150 GB of TFRecords; the build takes a few hours). Alternatively extract the images as an "
    "image folder root/{{train,validation}}/<wnid>/*.JPEG and use --config.dataset=folder:/path/to/root.")


def epoch_seed(seed: int, epoch: int, process_index: int) -> int:
  """A 31-bit seed for one epoch of one process."""
  return int(np.random.SeedSequence([seed, epoch, process_index]).generate_state(1)[0] >> 1)


@dataclasses.dataclass
class FolderSource:
  """An image folder root/<split>/<class>/<image>; labels are the indices of `label_names` (when
  given, e.g. a checkpoint's classes) or of the train split's sorted class directories."""
  root: str
  train_split: str
  corrupt_images: str
  label_names: tuple[str, ...] | None = None
  reads_files: bool = True  # records carry paths, read inside the parallel map
  has_real_labels: bool = False

  def split(self, split: str) -> folder.FolderSplit:
    return folder.labelled_split(self.root, split, self.train_split, self.corrupt_images, self.label_names)

  def class_names(self) -> tuple[str, ...]:
    if self.label_names is not None:
      return tuple(self.label_names)
    return self.split(self.train_split).class_names

  def num_examples(self, split: str) -> int:
    return len(self.split(split).paths)

  def _train_shard(self, seed: int, process_index: int, process_count: int) -> np.ndarray:
    # A fixed random assignment of files to processes (the listing is sorted by class), every
    # process the same number of files.
    n = len(self.split(self.train_split).paths)
    order = np.random.default_rng([seed, 2**31 - 1]).permutation(n)
    return order[process_index::process_count][:n // process_count]

  def train_epoch_names(self, seed, epoch, process_index, process_count, n_take) -> np.ndarray:
    """Indices of the process's examples in this epoch's order (the first n_take of them)."""
    shard = self._train_shard(seed, process_index, process_count)
    order = np.random.default_rng(epoch_seed(seed, epoch, process_index)).permutation(len(shard))
    return shard[order[:n_take]]

  def train_epoch(self, seed, epoch, process_index, process_count, n_take, skip) -> tf.data.Dataset:
    data = self.split(self.train_split)
    idx = self.train_epoch_names(seed, epoch, process_index, process_count, n_take)[skip:]
    positions = np.arange(skip, n_take, dtype=np.int64)
    return tf.data.Dataset.from_tensor_slices((positions, data.paths[idx], data.labels[idx]))

  def train_paths(self, seed, epoch, process_index, process_count, n_take, positions) -> list[str]:
    idx = self.train_epoch_names(seed, epoch, process_index, process_count, n_take)
    return [str(p) for p in self.split(self.train_split).paths[idx[positions]]]

  def eval_records(self, split, process_index, process_count) -> tuple[tf.data.Dataset, int, int]:
    """(dataset of (path, label), examples of this process, most examples of any process)."""
    data = self.split(split)
    paths, labels = data.paths[process_index::process_count], data.labels[process_index::process_count]
    most = len(range(0, len(data.paths), process_count))
    return tf.data.Dataset.from_tensor_slices((paths, labels)), len(paths), most

  def eval_paths(self, split, process_index, process_count, positions) -> list[str]:
    return [str(p) for p in self.split(split).paths[process_index::process_count][positions]]


@dataclasses.dataclass
class TfdsSource:
  """A TFDS dataset with 'image' and 'label' features, read with images still encoded."""
  name: str
  data_dir: str | None
  options: tf.data.Options
  reads_files: bool = False

  def __post_init__(self):
    import tensorflow_datasets as tfds
    self._tfds = tfds
    try:
      self.builder = tfds.builder(self.name, data_dir=self.data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
      raise ValueError(f"Unknown TFDS dataset {self.name!r} (config.dataset). Use a TFDS name, "
                       "'folder:/path/to/root', 'digits' or 'synthetic'.") from e
    features = self.builder.info.features
    # imagenet2012_real labels each image with its original label and a set of ReaL labels.
    self.label_key = next((k for k in ("label", "original_label") if k in features), None)
    self.real_key = "real_label" if "real_label" in features else None
    if "image" not in features or self.label_key is None:
      raise ValueError(f"TFDS dataset {self.name!r} has features {list(features)}; "
                       "the pipeline needs 'image' and 'label'.")

  def _not_prepared(self) -> ValueError:
    data_dir = self.data_dir or "~/tensorflow_datasets"
    msg = (f"TFDS dataset {self.name!r} is not prepared in data_dir {data_dir!r}. If you have a prepared copy "
           "elsewhere, pass its directory: --config.data_dir=/path/to/tensorflow_datasets. Otherwise: ")
    if self.name.split(":")[0] == "imagenet2012":
      msg += _IMAGENET_HINT.format(data_dir=data_dir)
    else:
      msg += f"Prepare it with\n  tfds build {self.name.split(':')[0]} --data_dir {data_dir}"
    return ValueError(msg)

  def open(self, split, **kwargs) -> tf.data.Dataset:
    try:
      return self.builder.as_dataset(split=split, decoders={"image": self._tfds.decode.SkipDecoding()},
                                     **kwargs)
    except AssertionError as e:
      if "could not find data" in str(e):
        raise self._not_prepared() from e
      raise

  @property
  def has_real_labels(self) -> bool:
    return self.real_key is not None

  def class_names(self) -> tuple[str, ...]:
    label = self.builder.info.features[self.label_key]
    names = tuple(label.names)
    if self.name.split(":")[0] == "imagenet2012" and len(names) == 1000:
      from focalnet_jax.data import labels  # WordNet lemmas instead of the wnids TFDS gives
      names = labels.imagenet_class_names(1000) or names
    return names

  def num_examples(self, split) -> int:
    if self.builder.info.splits:  # prepared: sizes recorded at build time
      return self.builder.info.splits[split].num_examples
    # Unprepared (raises with instructions) or mocked by tfds.testing.mock_data, which
    # records no split sizes but gives its datasets a known cardinality.
    n = int(self.open(split).cardinality())
    if n < 0:
      raise ValueError(f"Cannot tell the size of split {split!r} of {self.name!r}.")
    return n

  def _process_split(self, split, process_index, process_count, drop_remainder):
    if process_count == 1:
      return split
    return self._tfds.even_splits(split, n=process_count, drop_remainder=drop_remainder)[process_index]

  def _records(self, ds, with_real: bool = False):
    """(encoded image, label), plus a multi-hot float vector of the ReaL labels if asked."""
    num_classes = self.builder.info.features[self.label_key].num_classes

    def record(ex):
      out = (ex["image"], tf.cast(ex[self.label_key], tf.int32))
      if with_real:
        # An image with no ReaL label gets all zeros and is left out of the ReaL accuracy.
        hot = tf.one_hot(tf.cast(ex[self.real_key], tf.int32), num_classes, dtype=tf.float32)
        out += (tf.minimum(tf.reduce_sum(hot, axis=0), 1.0),)
      return out

    return ds.map(tf.autograph.experimental.do_not_convert(record))

  def train_epoch(self, split, seed, epoch, process_index, process_count, n_take, skip, shuffle_buffer):
    sub = self._process_split(split, process_index, process_count, drop_remainder=True)
    if self.num_examples(sub) < n_take:
      raise ValueError(f"Process shard {sub!r} of {self.name!r} holds fewer than the {n_take} examples "
                       "an epoch needs.")
    s = epoch_seed(seed, epoch, process_index)
    read_config = self._tfds.ReadConfig(shuffle_seed=s, try_autocache=False, options=self.options)
    ds = self._records(self.open(sub, shuffle_files=True, read_config=read_config))
    ds = ds.shuffle(shuffle_buffer, seed=s).take(n_take).enumerate()
    # Resuming mid-epoch reads (but does not decode) the skipped records.
    return ds.skip(skip).map(tf.autograph.experimental.do_not_convert(lambda i, rec: (i, rec[0], rec[1])))

  def eval_records(self, split, process_index, process_count) -> tuple[tf.data.Dataset, int, int]:
    subs = [self._process_split(split, p, process_count, drop_remainder=False) for p in range(process_count)]
    sizes = [self.num_examples(s) for s in subs]
    read_config = self._tfds.ReadConfig(try_autocache=False, options=self.options)
    ds = self._records(self.open(subs[process_index], shuffle_files=False, read_config=read_config),
                       with_real=self.has_real_labels)
    return ds, sizes[process_index], max(sizes)


def folder_root(dataset: str) -> str:
  root = dataset[len("folder:"):]
  if not root:
    raise ValueError("config.dataset='folder:' needs a path: 'folder:/path/to/root'.")
  return os.path.abspath(os.path.expanduser(root))
