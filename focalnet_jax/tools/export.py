r"""A trained FocalNet, exported for serving outside Python and JAX.

  python -m focalnet_jax.tools.export --checkpoint weights/focalnet_tiny_srf --output tiny.stablehlo
  python -m focalnet_jax.tools.export --checkpoint runs/quickstart --output tiny_tf --format savedmodel

`--checkpoint` is anything `eval.py --checkpoint` accepts (`focalnet_jax.from_pretrained`).
Both formats take float32 NHWC images, normalised as for evaluation, and return float32 logits;
the batch dimension is symbolic unless `--batch-size` fixes it.
  - 'stablehlo': a serialized `jax.export.Exported` (weights inside). Any process with jax runs it
    without this package: `jax.export.deserialize(open(path, 'rb').read()).call(images)`.
  - 'savedmodel': a TensorFlow SavedModel whose `serving_default` signature maps `images` to
    `logits`; the weights are TF variables, the network one `XlaCallModule` op (jax.export's module).

What is exported is plain `model.apply` with the portable depthwise convolution ('xla'): neither
the XLA:CPU native custom calls (a CPU-only shared library) nor the CPU batch chunking
(`kernels.chunking`) end up in an artifact.

Why the SavedModel's GELU is written out: JAX serializes `erf` as a `stablehlo.composite`
(`vhlo.composite_v2`), which TF 2.21's XlaCallModule cannot read ("unregistered operation
'vhlo.composite_v2'"); re-serialized for TF's older StableHLO (1.13.7) it reads, but TF then fails
to refine the symbolic batch inside the composite's decomposition. So the SavedModel is traced with
`erf` replaced by the very rational polynomial its decomposition holds (`portable_erf`): no
composite, the same numbers. The rest is serialized for TF's StableHLO version (export_savedmodel).
"""
from __future__ import annotations

import argparse
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from focalnet_jax import atomic

FORMATS = ("stablehlo", "savedmodel")
# Lowered for both: an artifact made on a CPU-only machine also serves on an NVIDIA GPU.
DEFAULT_PLATFORMS = ("cpu", "cuda")

# StableHLO's float32 erf (chlo.erf's decomposition, XLA's ErfImpl32): on x clamped to [-4, 4],
# erf(x) = x * P(x^2) / Q(x^2), coefficients from the highest power down.
_ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
          -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)
_ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
          -1.42647390514189e-02)


def portable_erf(x: jax.Array) -> jax.Array:
  """erf in elementary ops (float32 inside, as StableHLO computes it for every float type)."""
  dtype = x.dtype
  x = jnp.clip(x.astype(jnp.float32), -4.0, 4.0)
  x2 = x * x
  p, q = jnp.float32(_ERF_P[0]), jnp.float32(_ERF_Q[0])
  for c in _ERF_P[1:]:
    p = p * x2 + jnp.float32(c)
  for c in _ERF_Q[1:]:
    q = q * x2 + jnp.float32(c)
  return jnp.clip(x * p / q, -1.0, 1.0).astype(dtype)


def without_erf(fn: Callable[..., Any]) -> Callable[..., Any]:
  """`fn` with every `lax.erf` (at any depth of its jaxpr) computed by `portable_erf`."""
  from jax.extend import core as jex_core

  def run(jaxpr: Any, consts: Sequence[Any], *args: Any) -> list[Any]:
    env: dict[Any, Any] = {}
    read = lambda v: v.val if isinstance(v, jex_core.Literal) else env[v]  # noqa: E731
    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    for eqn in jaxpr.eqns:
      inputs = [read(v) for v in eqn.invars]
      if eqn.primitive.name == "erf":
        outputs = [portable_erf(*inputs)]
      elif eqn.primitive.name in ("pjit", "jit", "closed_call", "custom_jvp_call"):  # nested jaxprs: inline
        # them (a custom_jvp, such as GELU's, by its primal: the artifact is never differentiated)
        inner = eqn.params.get("jaxpr") or eqn.params["call_jaxpr"]
        outputs = run(inner.jaxpr, inner.consts, *inputs)
      else:
        outputs = eqn.primitive.bind(*inputs, **eqn.params)
        outputs = outputs if eqn.primitive.multiple_results else [outputs]
      env.update(zip(eqn.outvars, outputs))
    return [read(v) for v in jaxpr.outvars]

  def wrapped(*args: Any) -> Any:
    closed, out_tree = jax.make_jaxpr(fn, return_shape=True)(*args)
    flat = run(closed.jaxpr, closed.consts, *jax.tree.leaves(args))
    return jax.tree.unflatten(jax.tree.structure(out_tree), flat)

  return wrapped


def portable_model(model: Any) -> Any:
  """`model` with the implementations every backend runs: 'xla' depthwise convs and the reference
  focal context (no CPU custom calls, no Pallas kernels), and `f` in the checkpoint's own layout
  (no padded columns in the exported graph)."""
  from focalnet_jax.model import FocalNet

  if not isinstance(model, FocalNet):
    raise TypeError(f"export takes a FocalNet classifier, got {type(model).__name__}.")
  return model.with_reference_execution()


def _image_spec(model: Any, image_size: int | Sequence[int], batch_size: int | None) -> jax.ShapeDtypeStruct:
  """The images' shape, the batch symbolic unless fixed; checks the size fits the model."""
  height, width = (image_size, image_size) if isinstance(image_size, (int, np.integer)) else image_size
  model.check_image_size(int(height), int(width))
  batch = jax.export.symbolic_shape("batch")[0] if batch_size is None else int(batch_size)
  return jax.ShapeDtypeStruct((batch, int(height), int(width), 3), jnp.float32)


def export_stablehlo(model: Any, variables: Any, image_size: int | Sequence[int] = 224, *,
                     batch_size: int | None = None, platforms: Sequence[str] = DEFAULT_PLATFORMS) -> bytes:
  """The serialized `jax.export` artifact of `images -> logits`, weights inside."""
  model = portable_model(model)
  spec = _image_spec(model, image_size, batch_size)
  apply = jax.jit(lambda images: model.apply(variables, images))
  return bytes(jax.export.export(apply, platforms=tuple(platforms))(spec).serialize())


def export_savedmodel(model: Any, variables: Any, output: str, image_size: int | Sequence[int] = 224, *,
                      batch_size: int | None = None, platforms: Sequence[str] = DEFAULT_PLATFORMS) -> str:
  """Writes a TF SavedModel of `images -> {'logits': ...}` to `output`; returns `output`."""
  import tensorflow as tf
  from jax.extend import mlir as jax_mlir
  from tensorflow.compiler.mlir.stablehlo import stablehlo as tf_stablehlo
  from tensorflow.compiler.tf2xla.python import xla as tfxla

  model = portable_model(model)
  spec = _image_spec(model, image_size, batch_size)
  leaves, treedef = jax.tree.flatten(variables)
  apply = jax.jit(without_erf(lambda leaves, images: model.apply(jax.tree.unflatten(treedef, leaves), images)))
  exported = jax.export.export(apply, platforms=tuple(platforms))(
      [jax.ShapeDtypeStruct(np.shape(a), a.dtype) for a in leaves], spec)
  # jax writes the StableHLO of its own day (1.18 from jax 0.12 on); TF's XlaCallModule reads
  # artifacts up to its own version (TF 2.21: 1.13.7) and fails in graph execution otherwise.
  module_bytes = jax_mlir.serialize_portable_artifact(exported.mlir_module(), tf_stablehlo.get_current_version())
  out_shape = [tuple(d if isinstance(d, int) else None for d in exported.out_avals[0].shape)]
  module = tf.Module()
  # Weights as variables, not graph constants: a GraphDef stops at 2 GB (FocalNet-H is 3 GB).
  module.params = [tf.Variable(np.asarray(a), trainable=False) for a in leaves]
  shape = tuple(None if not isinstance(d, int) else d for d in spec.shape)

  @tf.function(autograph=False, input_signature=[tf.TensorSpec(shape, tf.float32, name="images")])
  def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
    args = [*module.params, images]
    (logits,) = tfxla.call_module(
        [args[i] for i in exported.module_kept_var_idx], version=exported.calling_convention_version,
        module=module_bytes, Tout=[tf.float32], Sout=out_shape,
        platforms=[p.upper() for p in exported.platforms],
        disabled_checks=[str(c) for c in exported.disabled_safety_checks])
    return {"logits": logits}

  module.serve = serve
  with atomic.replacing(output) as tmp:  # an old export stays whole until the new one is
    tf.saved_model.save(module, tmp, signatures={"serving_default": serve})
  return output


def export(model: Any, variables: Any, *, format: str = "stablehlo", output: str | None = None,
           image_size: int | Sequence[int] = 224, batch_size: int | None = None,
           platforms: Sequence[str] = DEFAULT_PLATFORMS) -> bytes | str:
  """Exports `model.apply(variables, images)`: 'stablehlo' returns the artifact's bytes (and
  writes them to `output` if given); 'savedmodel' writes the directory `output` and returns it."""
  if format not in FORMATS:
    raise ValueError(f"format={format!r} is not one of {FORMATS}.")
  if format == "savedmodel":
    if not output:
      raise ValueError("format='savedmodel' writes a directory: pass output=PATH.")
    return export_savedmodel(model, variables, output, image_size, batch_size=batch_size, platforms=platforms)
  data = export_stablehlo(model, variables, image_size, batch_size=batch_size, platforms=platforms)
  if output:
    atomic.write_bytes(output, data)
  return data


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m focalnet_jax.tools.export", description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--checkpoint", required=True, help="Anything eval.py --checkpoint accepts.")
  parser.add_argument("--output", required=True, help="File (stablehlo) or directory (savedmodel) to write.")
  parser.add_argument("--format", choices=FORMATS, default="stablehlo")
  parser.add_argument("--image-size", type=int, nargs="+", default=None, metavar="SIDE",
                      help="One side, or height and width (default: the checkpoint's training size).")
  parser.add_argument("--batch-size", type=int, default=None, help="Fix the batch size (default: symbolic).")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                      help="Compute dtype inside the artifact (default: the checkpoint's); inputs and logits stay float32.")
  parser.add_argument("--platforms", nargs="+", default=list(DEFAULT_PLATFORMS),
                      help="Platforms to lower for (jax.export names: cpu, cuda, rocm, tpu).")
  parser.add_argument("--ema", action="store_true", help="Export the EMA weights of a training checkpoint.")
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  from focalnet_jax.weights import from_pretrained

  loaded = from_pretrained(args.checkpoint, ema=args.ema, **({"dtype": args.dtype} if args.dtype else {}))
  size = args.image_size or [loaded.info.image_size]  # the side it was trained (or published) at
  if len(size) not in (1, 2):
    raise SystemExit(f"--image-size takes one side or height and width, got {size}.")
  export(loaded.model, loaded.variables, format=args.format, output=args.output,
         image_size=size[0] if len(size) == 1 else tuple(size), batch_size=args.batch_size,
         platforms=args.platforms)
  batch = "symbolic" if args.batch_size is None else args.batch_size
  print(f"Wrote {args.format} {args.output}: images (batch {batch}, {size[0]}x{size[-1]}, 3) float32 -> logits")
  return 0
