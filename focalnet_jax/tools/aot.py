"""Compile the trainer's step for a GPU this machine does not have, and count what it would move.

  pip install "jax[cuda13]==$(python -c 'import jax; print(jax.__version__)')"   # the compiler; no GPU needed
  python -m focalnet_jax.aot --target h200 --model focalnet_tiny_srf --batch-size 128 --mode train

XLA:GPU can compile without a GPU when it is told the device (a GpuTargetConfig: SM count,
shared memory, compute capability; `gpu_targets/*.txtpb` hold the H100 SXM's and H200's public
specifications). The program is the one `python -m focalnet_jax.benchmark` times on a GPU (the
trainer's own step, or the chunked forward), compiled once per variant of the execution fields
(depthwise conv, focal context, remat, f alignment) and of what the LayerNorms write (`norm`:
float32 or bfloat16, which changes values too). For each, the table gives what XLA decided:
kernel launches (GEMMs, cuDNN convolutions, fusions), the device-memory traffic of one step as
`hlo_traffic` models it, the time that traffic takes at --hbm-tbps (a floor: memory-bound
FocalNet cannot run faster), and the device memory XLA allocates (arguments + temporaries +
outputs not aliased to inputs). Without a GPU there is no autotuning: XLA picks its default GEMM
and convolution algorithms, so a lent GPU's measurement stays the judge of speed.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Any

TARGETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_targets")
# Device-to-device copy bandwidth measured on this workplace's H200 (PyTorch, 8.6 GB in 2.0 ms):
# the practical HBM ceiling, below the 4.8 TB/s of the data sheet.
DEFAULT_HBM_TBPS = 4.3
# The variants compiled by default: the default execution, then one field changed at a time.
DEFAULT_VARIANTS = ("depthwise=xla", "depthwise=shift", "depthwise=xla,context=fused",
                    "depthwise=shift,context=fused", "depthwise=xla,remat=dots", "depthwise=xla,remat=block",
                    "depthwise=xla,f_align=8", "depthwise=xla,norm=bfloat16")


def _norm_dtype(value: str) -> str:
  from focalnet_jax.model.layers import NORM_DTYPES

  if value not in NORM_DTYPES:
    raise ValueError(f"norm takes {' or '.join(NORM_DTYPES)}")
  return value


_FIELDS = {"depthwise": ("depthwise_impl", str), "context": ("focal_context_impl", str),
           "remat": ("remat", str), "f_align": ("f_align", int), "norm": ("norm_dtype", _norm_dtype)}


def parse_variant(spec: str) -> dict[str, Any]:
  """'depthwise=xla,context=fused' -> {'depthwise_impl': 'xla', 'focal_context_impl': 'fused'}."""
  fields = {}
  for item in filter(None, spec.split(",")):
    key, eq, value = item.partition("=")
    if not eq or key not in _FIELDS:
      raise SystemExit(f"--variant {spec!r}: {item!r} is not KEY=VALUE with KEY one of {', '.join(_FIELDS)}.")
    name, kind = _FIELDS[key]
    try:
      fields[name] = kind(value)
    except ValueError as e:
      raise SystemExit(f"--variant {spec!r}: {item!r}: {e}.") from e
  return fields


def target_config(target: str) -> str:
  """The GpuTargetConfig text proto of a bundled target name (h100, h200) or of a .txtpb file."""
  path = target if os.path.isfile(target) else os.path.join(TARGETS_DIR, f"{target}.txtpb")
  if not os.path.isfile(path):
    names = sorted(f[:-6] for f in os.listdir(TARGETS_DIR) if f.endswith(".txtpb"))
    raise SystemExit(f"--target {target!r}: neither a bundled target ({', '.join(names)}) nor a .txtpb file.")
  with open(path) as f:
    return f.read()


def gpu_device(target: str) -> Any:
  """A compile-only CUDA device for `target`; a SystemExit saying what to install if XLA:GPU is missing."""
  import jax
  from jax.experimental import topologies

  try:
    topology = topologies.get_topology_desc(platform="cuda", target_config=target_config(target), topology="1x1x1")
  except (NotImplementedError, RuntimeError) as e:
    raise SystemExit(
        f"Cannot compile for a GPU here ({type(e).__name__}: {e}).\nThe compiler comes with JAX's CUDA plugin, which "
        f"installs and compiles without a GPU: pip install \"jax[cuda13]=={jax.__version__}\". Where it is installed "
        f"but the machine has no GPU, run with JAX_PLATFORMS=cpu (the plugin's CUDA library checks, which fail "
        f"without a GPU, are then skipped; compiling for the target still works).") from e
  return topology.devices[0]


@dataclasses.dataclass
class Compiled:
  details: str
  compile_s: float
  traffic: dict[str, tuple[float, float]]  # kind -> (launches, bytes), from hlo_traffic
  device_bytes: int
  error: str = ""
  scopes: list[tuple[str, float, float]] = dataclasses.field(default_factory=list)  # hlo_traffic.traffic_by_scope

  def launches(self, *kinds: str) -> int:
    return int(sum(n for k, (n, _) in self.traffic.items() if not kinds or k in kinds))

  def traffic_bytes(self) -> float:
    return sum(b for _, b in self.traffic.values())


def abstract_program(config: Any, mode: str, num_classes: int, num_train: int,
                     image_dtype: str) -> tuple[Any, tuple, dict]:
  """(function, abstract arguments, jit options) of the step the benchmark times, for `config`; train
  images of `image_dtype` ('uint8': the crops the tf.data pipeline ships, augmented in the step)."""
  import jax
  import jax.numpy as jnp

  from focalnet_jax.tools.benchmark_runners import forward_fn, train_program
  from focalnet_jax.train import state as train_state

  model, _ = train_state.build_model(config, num_classes)
  size, batch = config.image_size, config.batch_size
  images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8 if mode == "train" and image_dtype == "uint8"
                                else jnp.float32)
  if mode == "infer":
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))["params"]
    return forward_fn(model, config.model.chunk_elements), (params, images), {}
  step_fn, init_fn = train_program(model, config, num_classes, num_train)
  rng = jax.eval_shape(lambda: jax.random.PRNGKey(0))
  state = jax.eval_shape(init_fn, rng)
  batch_tree = {"image": images, "label": jax.ShapeDtypeStruct((batch,), jnp.int32)}
  return step_fn, (state, batch_tree, rng), {"donate_argnums": 0}


def failure(error: Exception) -> str:
  """A compile error's first line for the table, with the way around the one we know."""
  first_line = (str(error).strip().splitlines() or [""])[0][:160]
  text = f"{type(error).__name__}: {first_line}"
  if "Couldn't find output tile sizes" in str(error):  # jax 0.10's Triton GEMM emitter, no device to tune on
    text += " (try XLA_FLAGS=--xla_gpu_enable_triton_gemm=false: GEMMs through cuBLAS)"
  return text


def compile_variant(args: argparse.Namespace, spec: str, device: Any) -> Compiled:
  """Compiles the program with the fields of `spec` for `device`; a failure is reported in the row."""
  import jax

  from focalnet_jax import create_model
  from focalnet_jax.tools import benchmark, hlo_traffic

  ns = argparse.Namespace(**{**vars(args), "depthwise_impl": "xla", "focal_context_impl": "reference",
                             "remat": "none", "f_align": 1, "norm_dtype": None, "ema_decay": None,
                             "chunk_elements": "0" if args.mode == "train" else args.chunk_elements})
  config = benchmark.benchmark_config(ns, args.image_size, 0)
  for name, value in parse_variant(spec).items():
    config.model[name] = value
  m = config.model
  details = (f"{m.depthwise_impl}, {m.focal_context_impl} context, remat {m.remat}, f_align {m.f_align}, "
             f"{m.norm_dtype or 'float32'} norms")
  num_classes = m.num_classes or create_model(m.name).num_classes
  sharding = jax.sharding.SingleDeviceSharding(device)
  t0 = time.perf_counter()
  try:
    fn, abstract, options = abstract_program(config, args.mode, num_classes, benchmark.NUM_TRAIN, args.images)
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), abstract)
    compiled = jax.jit(fn, **options).trace(*abstract).lower().compile()
  except Exception as e:  # noqa: BLE001 - one variant that does not compile is a row, not the end
    return Compiled(details, time.perf_counter() - t0, {}, 0, failure(e))
  stats = compiled.memory_analysis()
  device_bytes = stats.argument_size_in_bytes + stats.temp_size_in_bytes + (
      stats.output_size_in_bytes - stats.alias_size_in_bytes)
  found = hlo_traffic.kernels(compiled.as_text())
  return Compiled(details, time.perf_counter() - t0, hlo_traffic.kernel_traffic(found), device_bytes,
                  scopes=hlo_traffic.traffic_by_scope(found))


def format_table(rows: list[Compiled], batch: int, hbm_tbps: float) -> str:
  """One line per variant: launches by kind, traffic, the floor time and img/s it allows, device memory."""
  head = ("| variant | launches | GEMM | conv | fusions | traffic GB/step | floor ms | img/s ceiling "
          "| device GiB | compile s |")
  lines = [head, "|" + "---|" * 10]
  for r in rows:
    if r.error:
      lines.append(f"| {r.details} | failed: {r.error} |" + " |" * 8)
      continue
    floor_s = r.traffic_bytes() / (hbm_tbps * 1e12)
    fusions = r.launches(*(k for k in r.traffic if k.endswith("fusion")))
    lines.append(f"| {r.details} | {r.launches()} | {r.launches('gemm')} | {r.launches('conv')} | {fusions} "
                 f"| {r.traffic_bytes() / 1e9:.1f} | {floor_s * 1e3:.2f} | {batch / floor_s:,.0f} "
                 f"| {r.device_bytes / 2**30:.2f} | {r.compile_s:.0f} |")
  return "\n".join(lines)


def format_scopes(row: Compiled, top: int, hbm_tbps: float) -> str:
  """Where one variant's traffic goes: the `top` model scopes (forward/backward, module path)."""
  total = row.traffic_bytes()
  lines = [f"Traffic by scope, {row.details}:", "| scope | launches | GB/step | share | floor ms |", "|---|---|---|---|---|"]
  for name, n, b in row.scopes[:top]:
    lines.append(f"| {name} | {n:.0f} | {b / 1e9:.2f} | {b / total:.1%} | {b / (hbm_tbps * 1e12) * 1e3:.2f} |")
  return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--target", default="h200", help="a bundled GPU (h100, h200) or a GpuTargetConfig .txtpb file")
  p.add_argument("--model", default="focalnet_tiny_srf")
  p.add_argument("--batch-size", type=int, default=128)
  p.add_argument("--image-size", type=int, default=224)
  p.add_argument("--mode", choices=("infer", "train"), default="train")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16")
  p.add_argument("--images", choices=("float32", "uint8"), default="float32",
                 help="train: ready float32 images, or the uint8 crops of the tf.data pipeline, which the step "
                      "flips, RandAugments, normalises and erases")
  p.add_argument("--config", default=None, help="training config (path[:arg]); default configs/default.py")
  p.add_argument("--chunk-elements", default="0", help="infer: activation elements per stage chunk (0 = none)")
  p.add_argument("--variant", action="append", default=None,
                 help="fields to compile, e.g. 'depthwise=shift,context=fused,remat=dots,f_align=8,norm=bfloat16' "
                      "(unnamed fields: xla, reference, none, 1, float32); repeat for more rows. Default: "
                      + "; ".join(DEFAULT_VARIANTS))
  p.add_argument("--hbm-tbps", type=float, default=DEFAULT_HBM_TBPS,
                 help="device-memory bandwidth for the floor time (default: the H200's measured copy rate)")
  p.add_argument("--by-scope", type=int, default=0, metavar="N",
                 help="also print the N model scopes (forward/backward, module) moving most bytes, per variant")
  return p


def main(argv: list[str] | None = None) -> None:
  args = parser().parse_args(argv)
  from focalnet_jax.tools import benchmark

  args.config = args.config or benchmark.DEFAULT_CONFIG
  variants = args.variant or list(DEFAULT_VARIANTS)
  for spec in variants:
    parse_variant(spec)  # every --variant checked before the first compile
  device = gpu_device(args.target)
  rows = []
  for spec in variants:
    rows.append(compile_variant(args, spec, device))
    print(f"compiled {rows[-1].details} in {rows[-1].compile_s:.0f} s{' (failed)' if rows[-1].error else ''}",
          file=sys.stderr, flush=True)
  import jax

  print(f"{args.model}, {args.mode}, {args.dtype}, batch {args.batch_size}, {args.image_size} px, compiled for "
        f"{device.device_kind} without a GPU (jax {jax.__version__}, {time.strftime('%Y-%m-%d')}); floor = "
        f"traffic / {args.hbm_tbps} TB/s")
  print(format_table(rows, args.batch_size, args.hbm_tbps))
  for row in rows if args.by_scope else ():
    if not row.error:
      print("\n" + format_scopes(row, args.by_scope, args.hbm_tbps))


if __name__ == "__main__":
  main()
