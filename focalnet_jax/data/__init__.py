"""Datasets: what the trainer and evaluation read, and how a config names one.

A dataset (`Dataset`) answers three questions for a config: its `info` (class count and names,
split sizes), its train batches from a given step, and one pass of eval batches, each for one
process of many. `from_config(config)` gives the dataset `config.dataset` names:
  - a TFDS name, 'folder:/path' or 'digits': the tf.data pipeline (`pipeline`, with the
    augmentations in `augment`); TensorFlow is imported when it is first built, not here;
  - 'synthetic': random ImageNet-shaped batches (`synthetic`), numpy only;
  - 'digits' where TensorFlow is not installed: the same digits held in memory, with the
    recipe's crop/resize/flip in numpy (`arrays.digits_data`), so the quickstart runs anywhere.
`ArrayData` holds a dataset in memory as numpy arrays (TF-free); pass it to
`train_and_evaluate(config, workdir, data=...)`.

Every dataset keeps the trainer's contract: the train batch at step t depends only on
(config, t, process), so resumed runs see the batches an uninterrupted run would; eval yields
every example once over all processes, in equally many batches per process, padded rows masked.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import sys
from typing import Iterator, Protocol

import numpy as np

from focalnet_jax.data.arrays import ArrayData, digits_data
from focalnet_jax.data.digits import prepare_digits
from focalnet_jax.data.eval_images import IMAGENET_MEAN, IMAGENET_STD, load_eval_images
from focalnet_jax.data.info import DatasetInfo
from focalnet_jax.data.pipeline import eval_iterator, get_info, train_iterator
from focalnet_jax.data.synthetic import SyntheticData, synthetic_iterator

Batch = dict[str, np.ndarray]


class Dataset(Protocol):
  """What the trainer and evaluation read (see the module docstring for the contract)."""

  # float32: train images arrive ready; uint8: crops the train step augments and normalises
  # (`focalnet_jax.data.device_augment`).
  train_image_dtype: type

  def info(self, config) -> DatasetInfo: ...

  def train_batches(self, config, *, start_step: int = 0, process_index: int = 0,
                    process_count: int = 1) -> Iterator[Batch]: ...

  def eval_batches(self, config, *, process_index: int = 0, process_count: int = 1) -> Iterator[Batch]: ...


class PipelineData:
  """The tf.data pipeline over a TFDS dataset, an image folder or the digits folder."""

  train_image_dtype = np.uint8  # random resized crops; the rest of the recipe runs in the train step

  def info(self, config) -> DatasetInfo:
    return get_info(config)

  def train_batches(self, config, *, start_step: int = 0, process_index: int = 0,
                    process_count: int = 1) -> Iterator[Batch]:
    return train_iterator(config, start_step=start_step, process_index=process_index,
                          process_count=process_count)

  def eval_batches(self, config, *, process_index: int = 0, process_count: int = 1) -> Iterator[Batch]:
    return eval_iterator(config, process_index=process_index, process_count=process_count)


def has_tensorflow() -> bool:
  """Whether TensorFlow can be imported here (without importing it: that takes seconds)."""
  if "tensorflow" in sys.modules:
    return sys.modules["tensorflow"] is not None
  return importlib.util.find_spec("tensorflow") is not None


def from_config(config) -> Dataset:
  """The dataset `config.dataset` names."""
  if config.dataset == "synthetic":
    return SyntheticData()
  if config.dataset == "digits" and not has_tensorflow():
    logging.warning("TensorFlow is not installed: the digits are read in memory, with the crops and resizes "
                    "done in numpy (RandAugment and random erasing are not available there).")
    return digits_data(config)
  return PipelineData()


def resolve_data_dir(config, workdir: str):
  """`config` with its data's location made explicit, so that the saved config still names the
  data from another directory: a 'digits' run keeps its data with the run (`<workdir>/data`)
  unless told otherwise (other datasets keep their data_dir; None: TFDS's default), and a
  `folder:` path is made absolute."""
  folder = config.dataset[len("folder:"):] if config.dataset.startswith("folder:") else ""
  if not folder and (config.dataset != "digits" or config.data_dir is not None):
    return config
  config = config.copy_and_resolve_references()
  if folder:
    config.dataset = "folder:" + os.path.abspath(os.path.expanduser(folder))
  else:
    config.data_dir = os.path.join(os.path.abspath(workdir), "data")
  return config


__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "ArrayData", "Dataset", "DatasetInfo", "PipelineData", "SyntheticData",
    "digits_data", "eval_iterator", "from_config", "get_info", "has_tensorflow", "load_eval_images", "prepare_digits",
    "resolve_data_dir", "synthetic_iterator", "train_iterator",
]
