"""The device mesh and FSDP shardings.

A 2-D mesh ('data', 'fsdp'): the batch is split over both axes; each parameter (and its
optimizer moments) is split over 'fsdp' along its largest dimension that divides evenly, so
with fsdp = n every device holds 1/n of the weights (ZeRO-3 style) and XLA inserts the
all-gathers and reduce-scatters. Small parameters are replicated: sharding them saves no
memory worth the collectives.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp")
BATCH_SPEC = P(AXES)


def mesh_shape(data: int, fsdp: int, num_devices: int) -> tuple[int, int]:
  """Resolves the config's mesh sizes (-1 = the remaining devices) against `num_devices`."""
  if data == -1 and fsdp == -1:
    raise ValueError("mesh.data and mesh.fsdp cannot both be -1; set one of them.")
  if data == -1 or fsdp == -1:
    known = fsdp if data == -1 else data
    if known < 1 or num_devices % known:
      raise ValueError(f"mesh size {known} does not divide the {num_devices} devices.")
    data, fsdp = (num_devices // known, fsdp) if data == -1 else (data, num_devices // known)
  if data < 1 or fsdp < 1 or data * fsdp > num_devices:
    raise ValueError(
        f"mesh data={data} x fsdp={fsdp} needs {data * fsdp} devices; {num_devices} are available."
    )
  return data, fsdp


def make_mesh(data: int, fsdp: int, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A ('data', 'fsdp') mesh over `devices` (all by default); -1 means 'the rest'.

  When the mesh is smaller than the device list (e.g. 1x1 on 8 devices) it uses the first ones.
  """
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(data, fsdp, len(devices))
  n = shape[0] * shape[1]
  return jax.make_mesh(
      shape, AXES, axis_types=(AxisType.Auto,) * 2, devices=devices[:n] if n < len(devices) else devices
  )


def fsdp_spec(shape: Sequence[int], fsdp_size: int, min_size: int) -> P:
  """Shards the largest dimension divisible by `fsdp_size` over 'fsdp'; else replicates."""
  if fsdp_size == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[dim] = "fsdp"
      return P(*spec)
  return P()


def tree_shardings(tree: Any, mesh: jax.sharding.Mesh, min_size: int) -> Any:
  """NamedShardings for every leaf of a pytree of arrays / ShapeDtypeStructs (FSDP rule)."""
  fsdp_size = mesh.shape["fsdp"]
  return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(x.shape, fsdp_size, min_size)), tree)


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """The leading (batch) dimension split over all mesh devices."""
  return NamedSharding(mesh, BATCH_SPEC)


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def to_global(batch: dict[str, np.ndarray], sharding: NamedSharding,
              keys: Sequence[str] | None = None) -> dict[str, jax.Array]:
  """This process's share of a batch (all of `keys`, default every key) -> global arrays."""
  keys = batch.keys() if keys is None else keys
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(batch[k])) for k in keys}

