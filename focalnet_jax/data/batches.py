"""How a global batch is cut between processes: the one rule every source follows."""
from __future__ import annotations


def local_batch(global_batch: int, process_count: int) -> int:
  """This process's share of a global batch; every process gets the same number of rows."""
  if global_batch % process_count:
    raise ValueError(f"Batch size {global_batch} is not divisible by the process count {process_count}.")
  return global_batch // process_count
