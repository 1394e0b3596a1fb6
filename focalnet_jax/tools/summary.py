"""Model summary: parameter count, multiply-adds and stage shapes, without materialising weights.

Everything here is abstract: parameters come from `jax.eval_shape(model.init, ...)` and
multiply-adds (MACs) from the jaxpr of one forward pass (`jax.make_jaxpr` on
`ShapeDtypeStruct`s), so even the 750M-parameter huge models are summarised in seconds on a
laptop. The paper reports MACs / 1e9 under the name GFLOPs; the table and `summarize` keep
that name for that unit.

  python -m focalnet_jax.tools.summary focalnet_tiny_srf
  python -m focalnet_jax.tools.summary focalnet_base_lrf --image-size 384
  python -m focalnet_jax.tools.summary focalnet_tiny_srf --override focal_levels=4 --override depths=[2,2,18,2]
  python -m focalnet_jax.tools.summary --all --image-size 224
"""
from __future__ import annotations

import argparse
import math
import sys
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax.extend import core as jex_core

from focalnet_jax.model import FocalNet, per_stage
from focalnet_jax.model.variants import create_model, default_image_size, list_models
from focalnet_jax.tools import cli

Shape = tuple[int, ...]


# --- parameters and shapes ----------------------------------------------------------------


def _abstract_images(model: FocalNet, image_size: int | None) -> jax.ShapeDtypeStruct:
  # Parameters do not depend on the resolution: the smallest valid image is enough.
  size = model.stride if image_size is None else int(image_size)
  return jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)


def _for_tracing(model: FocalNet) -> FocalNet:
  # Same parameters and values, fewer equations: the 'shift' depthwise conv traces k*k ops
  # per focal level (slow to trace for the big models) and hides the conv's MACs, as a Pallas
  # focal context would; `f_align` would count the padded columns of `f`'s matmul.
  return model.with_reference_execution()


def abstract_variables(model: FocalNet, image_size: int | None = None) -> Any:
  """The variables pytree of `model` as `ShapeDtypeStruct`s (no memory allocated)."""
  model = _for_tracing(model)
  return jax.eval_shape(model.init, jax.random.key(0), _abstract_images(model, image_size))


def num_params(tree: Any) -> int:
  """Number of scalars in a pytree of arrays or `ShapeDtypeStruct`s."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


def count_params(model: FocalNet, image_size: int | None = None, variables: Any = None) -> int:
  """Number of scalars in the 'params' collection (the head included).

  `variables` (e.g. from `abstract_variables`) skips re-tracing `init`.
  """
  if variables is None:
    variables = abstract_variables(model, image_size)
  return num_params(variables["params"])


def stage_shapes(model: FocalNet, image_size: int, variables: Any = None) -> list[Shape]:
  """(H, W, C) of each stage's output map (`model.features`) for a square input."""
  model = _for_tracing(model)
  images = _abstract_images(model, image_size)
  if variables is None:
    variables = abstract_variables(model, image_size)
  maps = jax.eval_shape(lambda v, x: model.apply(v, x, method=model.features), variables, images)
  return [tuple(int(d) for d in m.shape[1:]) for m in maps]


# --- multiply-adds ------------------------------------------------------------------------------


def _sub_jaxprs(value: Any) -> list[jex_core.Jaxpr]:
  if isinstance(value, jex_core.ClosedJaxpr):
    return [value.jaxpr]
  if isinstance(value, jex_core.Jaxpr):
    return [value]
  if isinstance(value, (tuple, list)):
    return [j for v in value for j in _sub_jaxprs(v)]
  return []


def _eqn_macs(eqn: jex_core.JaxprEqn) -> int:
  """Multiply-adds of one dot_general or convolution: output elements x contraction size."""
  name = eqn.primitive.name
  out = math.prod(eqn.outvars[0].aval.shape)
  if name == "dot_general":
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs_shape = eqn.invars[0].aval.shape
    return out * math.prod(lhs_shape[d] for d in lhs_contract)
  if name == "conv_general_dilated":
    rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out feature, in feature, *spatial)
    rhs_shape = eqn.invars[1].aval.shape
    # The kernel's in-feature dim is already C_in / feature_group_count.
    return out * math.prod(rhs_shape[d] for d in rhs_spec[1:])
  return 0


def jaxpr_macs(jaxpr: jex_core.Jaxpr) -> int:
  """Multiply-adds of every dot_general and conv_general_dilated in `jaxpr`.

  Recurses into sub-jaxprs (pjit, remat, custom_jvp/vjp, ...); a scan body counts `length`
  times, a cond its most expensive branch, a while body once.
  """
  total = 0
  for eqn in jaxpr.eqns:
    total += _eqn_macs(eqn)
    subs = [j for v in eqn.params.values() for j in _sub_jaxprs(v)]
    if not subs:
      continue
    if eqn.primitive.name == "cond":
      total += max(jaxpr_macs(j) for j in subs)
    elif eqn.primitive.name == "scan":
      total += eqn.params["length"] * sum(jaxpr_macs(j) for j in subs)
    else:
      total += sum(jaxpr_macs(j) for j in subs)
  return total


def _elementwise_terms(model: FocalNet, image_size: int) -> int:
  """The non-matmul terms the official `flops()` adds, one per element of a C-wide map.

  Per block (N tokens, width C, L levels): N*C for each of norm1 and norm2, N*C*L for the
  level gates (the '+1' of its `(k**2 + 1)` per focal conv), N*C for the global gate and
  N*C for q * modulator (the '+1' of its `C * (C + 1)` for `h`). The ablations follow the
  computation: no gate products without gating, no global gate without global context.
  The stem and each downsample add one N*C for their LayerNorm. The final LayerNorm is counted as the official
  code does (inherited from Swin): C_last * (H/patch)*(W/patch) / 2**num_stages.
  """
  n = model.num_stages
  levels = per_stage(model.focal_levels, n, "focal_levels")
  side = image_size // model.patch_size
  total = side * side * model.embed_dim  # stem LayerNorm
  for i, (depth, c, level) in enumerate(zip(model.depths, model.stage_dims, levels)):
    gates = level + int(model.use_global_context) if model.use_gating else 0
    # norm1 + norm2, one product per gate, q * modulator (or q + modulator)
    total += depth * side * side * c * (2 + gates + 1)
    if i + 1 < n:
      side //= 2
      total += side * side * model.stage_dims[i + 1]  # downsample LayerNorm
  base = image_size // model.patch_size
  total += model.num_features * base * base // 2**n
  return total


def count_macs(
    model: FocalNet, image_size: int, include_elementwise: bool = True, variables: Any = None
) -> int:
  """Multiply-adds (MACs) of one forward pass on one square image, as the paper reports them.

  Counted from the traced jaxpr (`Execution.reference()`: 'xla' depthwise, so focal convolutions
  appear as convolutions): every dense layer (f, h, proj, fc1, fc2, head) and convolution
  (stem, downsamples, depthwise focal convs) costs output elements x contraction size, with
  the kernels actually used (7x7 stem and 3x3 downsamples for conv-embedding models). Biases,
  activations, the normalize_modulator division, poolings and residual adds are not counted.
  With `include_elementwise` (the default) the elementwise terms of the official FocalNet
  `flops()` are added (LayerNorms, gate products, q * modulator; see `_elementwise_terms`):
  the total then equals the official count exactly for the nine ImageNet-1K models (the
  paper's GFLOPs table). Without them, the dense/conv MACs alone are 0.03-0.35% lower.
  """
  model.check_image_size(image_size, image_size)
  traced = _for_tracing(model)
  images = _abstract_images(traced, image_size)
  if variables is None:  # the parameter tree does not depend on the execution switches
    variables = abstract_variables(traced, image_size)
  closed = jax.make_jaxpr(lambda v, x: traced.apply(v, x))(variables, images)
  macs = jaxpr_macs(closed.jaxpr)
  if include_elementwise:
    macs += _elementwise_terms(traced, image_size)
  return macs



# --- summary and CLI ----------------------------------------------------------------------


def summarize(
    name_or_model: str | FocalNet, image_size: int | None = None, **overrides: Any
) -> dict[str, Any]:
  """Name, params, GFLOPs (the paper's unit: multiply-adds / 1e9), image size and stage shapes.

  `name_or_model` is a variant name (built with `create_model(name, **overrides)`; the image
  size defaults to the variant's) or a FocalNet (then `image_size` is required and
  `overrides` are applied with `clone`).
  """
  if isinstance(name_or_model, str):
    name = name_or_model
    model = create_model(name, **overrides)
    if image_size is None:
      image_size = default_image_size(name)
  else:
    name = type(name_or_model).__name__
    model = name_or_model.clone(**overrides) if overrides else name_or_model
    if image_size is None:
      raise ValueError("summarize(model) needs image_size; only variant names carry a default.")
  variables = abstract_variables(model, image_size)
  return {
      "name": name,
      "params": count_params(model, variables=variables),
      "gflops": count_macs(model, image_size, variables=variables) / 1e9,
      "image_size": int(image_size),
      "stage_shapes": stage_shapes(model, image_size, variables=variables),
  }


def format_table(rows: Sequence[dict[str, Any]]) -> str:
  """A fixed-width table: name, image size, params, GFLOPs (multiply-adds / 1e9), stage shapes (H x W x C)."""
  header = ("model", "img", "params", "GFLOPs", "stage outputs (H x W x C)")
  lines = []
  for r in rows:
    shapes = " ".join("x".join(str(d) for d in s).ljust(12) for s in r["stage_shapes"])
    lines.append((r["name"], str(r["image_size"]), f"{r['params']:,}", f"{r['gflops']:.2f}", shapes))
  widths = [max(len(x[i]) for x in [header, *lines]) for i in range(len(header))]
  fmt = lambda cols: "  ".join(  # noqa: E731
      c.ljust(w) if i in (0, 4) else c.rjust(w) for i, (c, w) in enumerate(zip(cols, widths))
  ).rstrip()
  return "\n".join([fmt(header), fmt(tuple("-" * w for w in widths)), *map(fmt, lines)])


def main(argv: Sequence[str] | None = None) -> None:
  """Prints the summary table of one variant (or of all); exits with status 2 on a bad argument."""
  parser = argparse.ArgumentParser(
      prog="python -m focalnet_jax.tools.summary",
      description="Parameters, GFLOPs (multiply-adds) and stage output shapes of FocalNet "
      "variants, computed abstractly (no weights are allocated).",
  )
  parser.add_argument("name", nargs="?", help=f"variant name, one of: {', '.join(list_models())}")
  parser.add_argument("--all", action="store_true", help="one row per published variant")
  parser.add_argument("--image-size", type=int, default=None, help="default: the variant's own")
  cli.add_override_argument(parser)
  args = parser.parse_args(argv)
  if args.all == (args.name is not None):
    parser.error("give exactly one of NAME or --all")
  names = list_models() if args.all else [args.name]
  overrides = cli.overrides(args.override)
  try:
    rows = [summarize(n, args.image_size, **overrides) for n in names]
  except (ValueError, TypeError) as e:
    parser.exit(2, f"error: {e}\n")
  print(format_table(rows))


if __name__ == "__main__":
  main(sys.argv[1:])
