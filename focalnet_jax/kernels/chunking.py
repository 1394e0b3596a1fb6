"""Running FocalNet's stages over chunks of the batch, so that each chunk's activations stay in cache.

Every op in a FocalNet stage acts on each example alone, so a stage can run over pieces of
the batch in a loop and give the same result; what changes is the working set. On CPU, a
chunk whose activations fit in the cache runs about twice as fast as the whole batch
(FocalNet-T's first stage at batch 8: 209 -> 90 ms). In training the loop must stack every
chunk's residuals for the backward pass, which costs more than the cache saves, so 'auto'
chunks inference only (micro-batches, `focalnet_jax.train.step.accumulate_gradients`, are the way to
train in cache-sized pieces); accelerators want the whole batch at once.

The model knows nothing of this: `apply` drives the model's own pieces (`embed`, `run_stage`,
`head_from_tokens`) and loops over chunks with `lax.map`. Chunk m holds examples m, m + n,
m + 2n, ... (n chunks), so a batch sharded over devices stays where it is.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax import lax

# Activation elements per chunk for 'auto' on CPU: 2**19 float32 (2 MiB, one core's L2 cache
# on the Zen 4 machines we measured) puts one 56x56x96 FocalNet-T stage-1 image in a chunk.
CACHE_CHUNK_ELEMENTS = 2**19

ChunkElements = int | str  # activation elements per chunk, 0 (whole batch) or 'auto'
Rngs = Mapping[str, jax.Array] | None


def resolve_chunk_elements(value: ChunkElements, train: bool) -> int:
  """The element budget per chunk that `value` means; 0 runs whole batches.

  'auto' is CACHE_CHUNK_ELEMENTS for inference on CPU and 0 in training or on accelerators.
  """
  if not (value == "auto" or (isinstance(value, (int, np.integer)) and not isinstance(value, bool)
                              and value >= 0)):
    raise ValueError(
        f"chunk_elements={value!r} must be 'auto', 0 (whole batches) or a positive number of "
        "activation elements per chunk."
    )
  if value == "auto":
    return CACHE_CHUNK_ELEMENTS if jax.default_backend() == "cpu" and not train else 0
  return int(value)


def auto_chunk_size(batch: int, elements_per_example: int, budget: int, num_devices: int = 1) -> int:
  """The largest chunk of examples within `budget` elements that divides the batch.

  Chunks are kept a multiple of `num_devices` where the batch allows, so that a batch
  sharded over devices splits evenly; at least one example (or device-multiple) per chunk.
  """
  divisors = [c for c in range(1, batch + 1) if batch % c == 0]
  even = [c for c in divisors if c % num_devices == 0] or [batch]
  fitting = [c for c in even if c * elements_per_example <= budget]
  return max(fitting) if fitting else min(even)


def _chunk_size(shape: Sequence[int], budget: int) -> int | None:
  """Examples per chunk for a stage input of `shape` (B, H, W, C); None: the whole batch."""
  if not budget:
    return None
  return auto_chunk_size(shape[0], math.prod(shape[1:]), budget, jax.local_device_count())


def stage_chunk_sizes(model: nn.Module, batch: int, height: int, width: int,
                      chunk_elements: ChunkElements = "auto", train: bool = False) -> tuple[int | None, ...]:
  """The chunk size each stage of `model` runs with for a (batch, height, width) input; None: all."""
  budget = resolve_chunk_elements(chunk_elements, train)
  s = model.patch_size
  return tuple(
      _chunk_size((batch, height // (s * 2**i), width // (s * 2**i), dim), budget)
      for i, dim in enumerate(model.stage_dims)
  )


def _map_chunks(fn: Callable[[jax.Array, Rngs], Any], x: jax.Array, rngs: Rngs, chunk_size: int) -> Any:
  """fn over chunks of x's batch (chunk m: examples m, m + n, ...), outputs merged back in order."""
  b = x.shape[0]
  if b % chunk_size:
    raise ValueError(f"chunk_size={chunk_size} does not divide the batch size {b}.")
  n = b // chunk_size
  xs = x.reshape((chunk_size, n) + x.shape[1:]).swapaxes(0, 1)
  keys = None if rngs is None else {name: jax.random.split(key, n) for name, key in rngs.items()}
  ys = lax.map(lambda args: fn(*args), (xs, keys))
  return jax.tree_util.tree_map(lambda y: y.swapaxes(0, 1).reshape((b,) + y.shape[2:]), ys)


def _forward(model: nn.Module, variables: Any, images: jax.Array, train: bool, rngs: Rngs,
             budget: int) -> tuple[list[jax.Array], jax.Array]:
  """(each stage's feature map, the last stage's output), stages run over chunks of the batch."""
  x = model.apply(variables, images, train, rngs=rngs, method="embed")
  stage_maps = []
  for i in range(model.num_stages):
    def run(xc: jax.Array, r: Rngs, i: int = i) -> tuple[jax.Array, jax.Array]:
      return model.apply(variables, xc, i, train, rngs=r, method="run_stage")

    size = _chunk_size(x.shape, budget)
    feats, x = run(x, rngs) if size is None or size >= x.shape[0] else _map_chunks(run, x, rngs, size)
    stage_maps.append(feats)
  return stage_maps, x


def apply(model: nn.Module, variables: Any, images: jax.Array, *, train: bool = False, rngs: Rngs = None,
          chunk_elements: ChunkElements = "auto") -> jax.Array:
  """`model.apply(variables, images, train=train, rngs=rngs)` with each stage run over chunks.

  The same logits and gradients as the plain call; with `train` and dropout or drop path, each
  chunk draws its own masks (a split of `rngs`), so the masks differ from the plain call's.
  `chunk_elements` bounds the activation elements (examples x H x W x C) of a chunk; 0 runs
  whole batches (exactly the plain call), 'auto': see `resolve_chunk_elements`.
  """
  budget = resolve_chunk_elements(chunk_elements, train)
  if not budget:
    return model.apply(variables, images, train=train, rngs=rngs)
  _, tokens = _forward(model, variables, images, train, rngs, budget)
  return model.apply(variables, tokens, method="head_from_tokens")


def features(model: nn.Module, variables: Any, images: jax.Array, *, train: bool = False, rngs: Rngs = None,
             chunk_elements: ChunkElements = "auto") -> list[jax.Array]:
  """`model.apply(variables, images, method='features')` with each stage run over chunks."""
  budget = resolve_chunk_elements(chunk_elements, train)
  if not budget:
    return model.apply(variables, images, train, rngs=rngs, method="features")
  return _forward(model, variables, images, train, rngs, budget)[0]
