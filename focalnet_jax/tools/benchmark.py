"""Speed and memory of FocalNet, side by side with timm's PyTorch FocalNet.

  python -m focalnet_jax.tools.benchmark --model focalnet_tiny_srf --batch-size 8 --mode infer --compare timm
  python -m focalnet_jax.tools.benchmark --batch-size 16 --mode train --compare timm
  python -m focalnet_jax.tools.benchmark --mode infer --sweep 224,384,512,768,1024 --plot sweep.png

Frameworks are measured in one process, round-robin (one timed round of each in turn, several
rounds), so that load from elsewhere on a shared machine hits all of them alike; the table gives
the median round. Our training step is the trainer's own (`train.step.make_train_step` on a
config from configs/default.py, or --config): mixup/cutmix, label smoothing, forward, backward,
global-norm clipping, AdamW, and EMA with --ema-decay; timm's is cross-entropy, clipping and
AdamW. Our inference is the chunked forward evaluation runs (`kernels.chunking.apply`).

Memory: on GPU, the allocator's peak. On CPU, where freed memory need not return to the OS,
the peak resident set size of a separate child process that builds the model and runs a few
steps of that one framework alone (imports included), so frameworks never share a process.
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import os
import subprocess
import sys
import time
import warnings

import ml_collections

from focalnet_jax import atomic
from focalnet_jax.model import execution as execution_lib

from focalnet_jax.tools.benchmark_runners import (  # noqa: F401 - register_torchvision_stubs: tests import it here
    JaxInferRunner, JaxTrainRunner, Result, Runner, TimmRunner, register_torchvision_stubs,
)

# The benchmark runs from the repository root, where configs/ lives beside the package.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "configs", "default.py")
# ImageNet-1K's training set: the schedule the step follows. Its length moves the learning rate,
# never the cost of a step.
NUM_TRAIN = 1_281_167


# --- what to run ---------------------------------------------------------------------------------


def runner_specs(args: argparse.Namespace) -> list[str]:
  """The frameworks to compare, in table order (ours first): one JAX row per micro-batch size."""
  specs = [f"jax:{m}" for m in micro_batch_sizes(args)]
  if args.compare == "timm":
    specs.append("timm")
    if not args.no_torch_compile:
      specs += [f"timm-compile:{mode}" for mode in args.torch_compile_modes.split(",")]
  return specs


def micro_batch_sizes(args: argparse.Namespace) -> list[int]:
  """--micro-batch-size as a list (training only; inference runs the whole batch)."""
  sizes = [int(m) for m in str(args.micro_batch_size).split(",")]
  return sizes if args.mode == "train" else sizes[:1]


def load_config(spec: str) -> ml_collections.ConfigDict:
  """`get_config(arg)` of a config file given as 'path[:arg]'."""
  from focalnet_jax.tools import sweep  # its loader puts the repository's configs package on sys.path

  path, arg = sweep.split_spec(spec)
  if not os.path.isfile(path):
    raise SystemExit(f"No config file at {path!r}: run from the repository root or pass --config PATH.")
  return sweep.load_module(path).get_config(arg)


def benchmark_config(args: argparse.Namespace, image_size: int, micro_batch_size: int) -> ml_collections.ConfigDict:
  """The training config (--config) with the benchmark's model, batch, micro-batches, size and dtypes."""
  num_micro = 1
  if args.mode == "train" and micro_batch_size and micro_batch_size < args.batch_size:
    if args.batch_size % micro_batch_size:
      raise SystemExit(f"--micro-batch-size {micro_batch_size} does not divide --batch-size {args.batch_size}.")
    num_micro = args.batch_size // micro_batch_size
  config = load_config(args.config)
  config.model.name = args.model
  config.model.dtype = args.dtype
  config.model.norm_dtype = args.norm_dtype
  for name in execution_lib.field_names():  # a switch not given keeps the config's value
    if getattr(args, name) is not None:
      config.execution[name] = execution_lib.parse_text(getattr(args, name))
  config.image_size = image_size
  config.batch_size = args.batch_size
  config.grad_accum_steps = num_micro
  if args.ema_decay is not None:
    config.ema_decay = args.ema_decay
  return config


def make_runner(args: argparse.Namespace, spec: str, image_size: int) -> Runner:
  """The runner of one entry of `runner_specs`."""
  from focalnet_jax import create_model

  if spec.startswith("jax:"):
    config = benchmark_config(args, image_size, int(spec.split(":")[1]))
    num_classes = config.model.num_classes or create_model(config.model.name).num_classes
    if args.mode == "train":
      return JaxTrainRunner(config, num_classes, NUM_TRAIN)
    return JaxInferRunner(config, num_classes)
  use_compile = spec.startswith("timm-compile")
  return TimmRunner(args.model, args.batch_size, image_size, args.mode, args.dtype, use_compile=use_compile,
                    drop_path_rate=create_model(args.model).drop_path_rate,
                    compile_mode=spec.split(":", 1)[1] if use_compile else "default")


def make_runners(args: argparse.Namespace, image_size: int) -> list[Runner]:
  """Every runner of `runner_specs`; a torch.compile that fails here is reported and left out."""
  runners = []
  for spec in runner_specs(args):
    try:
      runner = make_runner(args, spec, image_size)
      if spec.startswith("timm-compile"):
        runner.compile()
    except Exception as e:  # noqa: BLE001 - torch.compile is optional; report and go on
      if not spec.startswith("timm-compile"):
        raise
      print(f"torch.compile unavailable here ({type(e).__name__}: {e}); eager only.", file=sys.stderr)
      continue
    runners.append(runner)
  return runners


# --- measuring -----------------------------------------------------------------------------------


def child_peak_rss(argv: list[str], index: int) -> int | None:
  """Peak RSS (bytes) of a child process running only runner `index` for a few steps."""
  cmd = [sys.executable, "-m", "focalnet_jax.tools.benchmark", *argv, "--memory-child", str(index)]
  proc = subprocess.run(cmd, capture_output=True, text=True)
  for line in proc.stdout.splitlines()[::-1]:
    if line.startswith("{"):
      return json.loads(line)["peak_rss_bytes"]
  print(f"memory child {index} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
  return None


def _memory_child(args: argparse.Namespace) -> None:
  # Builds only its own framework: the peak RSS is that framework's alone.
  runner = make_runner(args, runner_specs(args)[args.memory_child], args.image_size)
  runner.compile()
  for _ in range(2):
    runner.step()
  runner.sync()
  # VmHWM: the peak RSS of this process's own address space. (ru_maxrss is no good here: Linux
  # carries it over fork and exec, so a child would report at least its parent's size.)
  with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
  print(json.dumps({"peak_rss_bytes": peak}))


def measure(runners: list[Runner], rounds: int, steps: int) -> list[Result]:
  """Compiles and warms every runner, then times `rounds` rounds of `steps` steps, round-robin."""
  for r in runners:
    r.compile()
    r.step()  # one more untimed step: allocator and caches warm
    r.sync()
  for _ in range(rounds):
    for r in runners:
      r.timed_round(steps)
  return [r.result() for r in runners]


# --- reporting -----------------------------------------------------------------------------------


def _fmt_mem(b: int | None) -> str:
  return "-" if b is None else f"{b / 2**30:.2f} GiB"


def measure_matmul_peak(dtype: str) -> float:
  """TFLOP/s of a large square matmul in `dtype` on the default device (median of 10 after a
  warm-up): the ceiling MFU is measured against (8192 on accelerators, 2048 on CPU)."""
  import jax
  import jax.numpy as jnp

  n = 2048 if jax.default_backend() == "cpu" else 8192
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.dtype(dtype))
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.dtype(dtype))
  mm = jax.jit(jnp.matmul)
  mm(a, b).block_until_ready()
  times = []
  for _ in range(10):
    t0 = time.perf_counter()
    mm(a, b).block_until_ready()
    times.append(time.perf_counter() - t0)
  return 2 * n**3 / statistics.median(times) / 1e12


def format_table(results: list[Result], title: str, peak_tflops: float | None = None) -> str:
  """A Markdown table, one row per result; ratios are against the first row. MFU is the
  achieved TFLOP/s (model FLOPs: 2 x MACs forward, 3x that for a training step) over
  `peak_tflops`; GB/s is the step's bytes accessed (XLA's cost analysis, JAX rows) per second."""
  base = results[0]
  rows = [
      "| framework | img/s | ms/step | compile s | peak mem | TFLOP/s | MFU | GB/s | speed vs first | mem vs first |",
      "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in results:
    tf, bw = r.tflops(), r.bandwidth_gbs()
    mem_ratio = (
        f"{r.peak_mem_bytes / base.peak_mem_bytes:.2f}x" if r.peak_mem_bytes and base.peak_mem_bytes else "-"
    )
    mfu = f"{tf / peak_tflops:.1%}" if tf is not None and peak_tflops else "-"
    rows.append(
        f"| {r.name} | {r.img_per_s:.1f} | {r.median_step_s * 1e3:.0f} | {r.compile_s:.1f} | "
        f"{_fmt_mem(r.peak_mem_bytes)} | {'-' if tf is None else f'{tf:.3f}'} | {mfu} | "
        f"{'-' if bw is None else f'{bw:.0f}'} | {r.img_per_s / base.img_per_s:.2f}x | {mem_ratio} |"
    )
  peak = f"\n\nMFU against a measured {peak_tflops:.1f} TFLOP/s matmul peak." if peak_tflops else ""
  return f"{title}\n\n" + "\n".join(rows) + peak


def machine_description() -> str:
  """The device the JAX rows ran on, for the table's title."""
  import jax

  dev = jax.devices()[0]
  if dev.platform == "cpu":
    # Host-allocator tuning changes CPU timings (README, Benchmarks): say when it is on.
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return f"CPU, {os.cpu_count()} cores ({jax.device_count()} JAX devices)" + (
        f", GLIBC_TUNABLES={tunables}" if tunables else "")
  return f"{dev.device_kind} ({dev.platform})"


def step_description(args: argparse.Namespace) -> str:
  """What one timed training step does, ours and timm's: the two are not the same work."""
  ema = f", EMA {args.ema_decay}" if args.ema_decay else ""
  ours = f"ours: the trainer's step (mixup/cutmix, label smoothing, clipping, AdamW{ema})"
  return ours + ("; timm: cross-entropy, clipping, AdamW" if args.compare == "timm" else "")


def run_sweep(args: argparse.Namespace, sizes: list[int]) -> str:
  """Cost against pixel count: one table row per framework and image size (eager timm only)."""
  lines = ["| image size | pixels | framework | ms/image | img/s |", "|---|---|---|---|---|"]
  points: dict[str, list[tuple[int, float]]] = {}
  for s in sizes:
    args.no_torch_compile = True  # a sweep compares eager only: torch.compile per size is minutes on CPU
    runners = make_runners(args, s)
    for r in measure(runners, args.rounds, args.steps):
      ms = r.median_step_s / r.batch_size * 1e3
      points.setdefault(r.series or r.name, []).append((s * s, ms))
      lines.append(f"| {s} | {s * s} | {r.name} | {ms:.1f} | {r.img_per_s:.1f} |")
    del runners
    gc.collect()
  if args.plot:
    plot_sweep(points, args.plot, f"{args.model} {args.mode} {args.dtype}, batch {args.batch_size}")
    lines.append(f"\nplot written to {args.plot}")
  return "\n".join(lines)


def plot_sweep(points: dict[str, list[tuple[int, float]]], path: str, title: str) -> None:
  """ms per image against pixels per image, one line per framework, as a PNG at `path`."""
  import matplotlib

  matplotlib.use("Agg")  # files only: no display is needed or wanted
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
  for name, pts in points.items():
    ax.plot([p for p, _ in pts], [m for _, m in pts], "o-", label=name)
  ax.set_xlabel("pixels per image")
  ax.set_ylabel("ms per image")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  with atomic.replacing(path) as tmp:
    fig.savefig(tmp)
  plt.close(fig)


# --- the command line ----------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
  """The benchmark's options."""
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default="focalnet_tiny_srf")
  p.add_argument("--batch-size", type=int, default=8)
  p.add_argument("--image-size", type=int, default=224)
  p.add_argument("--mode", choices=("infer", "train"), default="infer")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--norm-dtype", choices=("float32", "bfloat16"), default=None,
                 help="what the LayerNorms write, and so the residual stream's dtype (the config's "
                      "model.norm_dtype; default float32); statistics and the head stay float32")
  p.add_argument("--config", default=DEFAULT_CONFIG,
                 help="training config (path[:arg]) whose recipe our training step follows; the "
                      "benchmark sets its model, batch size, micro-batches, image size and dtypes")
  p.add_argument("--ema-decay", type=float, default=None,
                 help="train: keep an EMA of the weights in the step, as train.py does with "
                      "--config.ema_decay (default: the config's, 0 = none)")
  add_execution_flags(p)
  p.add_argument("--micro-batch-size", default="0",
                 help="train: run the step's forward/backward over micro-batches of this size and "
                      "accumulate (the update is the whole batch's; the config's grad_accum_steps); "
                      "0 = whole batch. A comma list gives one JAX row each, e.g. 0,2")
  p.add_argument("--compare", choices=("none", "timm"), default="none")
  p.add_argument("--no-torch-compile", action="store_true", help="with --compare timm: eager only")
  p.add_argument("--torch-compile-modes", default="default",
                 help="with --compare timm: torch.compile modes, one row each, e.g. default,max-autotune")
  p.add_argument("--peak-tflops", default="auto",
                 help="the matmul peak MFU is measured against: a number, 'auto' (measured here in --dtype) "
                      "or 'none'")
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--steps", type=int, default=3, help="steps per timed round")
  p.add_argument("--sweep", default="", help="comma-separated image sizes: cost against pixel count")
  p.add_argument("--plot", default="", help="with --sweep: write a PNG plot here")
  p.add_argument("--no-memory", action="store_true", help="CPU: skip the per-framework memory children")
  p.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
  return p


class _Deprecated(argparse.Action):
  """A former flag name: sets the switch, with a warning naming the new flag."""

  def __call__(self, parser, namespace, values, option_string=None):
    warnings.warn(f"{option_string} is deprecated and will be removed in the next release; use "
                  f"--{self.dest.replace('_', '-')} instead.", FutureWarning, stacklevel=2)
    setattr(namespace, self.dest, values)


def add_execution_flags(p: argparse.ArgumentParser) -> None:
  """One flag per execution switch (focalnet_jax.model.Execution): --depthwise, --focal-context,
  --remat, --f-align, --chunk-elements; unset, the config's `execution` value is kept."""
  group = p.add_argument_group("execution", "how our model runs (config.execution; docs/execution.md); "
                               "default: the config's value")
  for name in execution_lib.field_names():
    group.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, help=execution_lib.field_help(name))
  for old, new in execution_lib.LEGACY_NAMES.items():
    if old != new:  # --depthwise-impl, --focal-context-impl
      group.add_argument(f"--{old.replace('_', '-')}", dest=new, action=_Deprecated, help=argparse.SUPPRESS)


def main(argv: list[str] | None = None) -> None:
  """Runs the benchmark and prints its table (or the resolution sweep's)."""
  args = parser().parse_args(argv)
  title = (f"{args.model}, {args.mode}, {args.dtype}, batch {args.batch_size}, {{size}} px — "
           f"{machine_description()}, {time.strftime('%Y-%m-%d')}")
  if args.mode == "train":
    title += f"\n({step_description(args)})"
  if args.sweep:
    sizes = [int(s) for s in args.sweep.split(",")]
    print(title.format(size="/".join(map(str, sizes))))
    print(run_sweep(args, sizes))
    return
  if args.memory_child is not None:
    _memory_child(args)
    return
  results = measure(make_runners(args, args.image_size), args.rounds, args.steps)
  if results and results[0].peak_mem_bytes is None and not args.no_memory:
    child_argv = list(argv if argv is not None else sys.argv[1:])
    for i, r in enumerate(results):
      r.peak_mem_bytes = child_peak_rss(child_argv, i)
  peak = None if args.peak_tflops == "none" else (
      measure_matmul_peak(args.dtype) if args.peak_tflops == "auto" else float(args.peak_tflops))
  print(format_table(results, title.format(size=args.image_size), peak))


if __name__ == "__main__":
  main()
