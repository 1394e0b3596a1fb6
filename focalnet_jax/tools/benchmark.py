"""Speed and memory of FocalNet, side by side with timm's PyTorch FocalNet.

  python -m focalnet_jax.benchmark --model focalnet_tiny_srf --batch-size 8 --mode infer --compare timm
  python -m focalnet_jax.benchmark --batch-size 16 --mode train --compare timm
  python -m focalnet_jax.benchmark --mode infer --sweep 224,384,512,768,1024 --plot sweep.png

Frameworks are measured in one process, round-robin (one timed round of each in turn, several
rounds), so that load from elsewhere on a shared machine hits all of them alike; the table gives
the median round. A training step is forward, backward, global-norm clipping and AdamW.

Memory: on GPU, the allocator's peak. On CPU, where freed memory need not return to the OS,
the peak resident set size of a separate child process that builds the model and runs a few
steps of that one framework alone (imports included), so frameworks never share a process.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable

import numpy as np


@dataclasses.dataclass
class Result:
  name: str
  step_s: list[float]
  compile_s: float
  peak_mem_bytes: int | None
  batch_size: int
  gflops_per_image: float | None  # multiply-adds x 2 of one image's forward (x3 for training)
  series: str = ""  # the name without per-size details: one line per framework in a sweep plot

  @property
  def median_step_s(self) -> float:
    return statistics.median(self.step_s)

  @property
  def img_per_s(self) -> float:
    return self.batch_size / self.median_step_s

  def tflops(self) -> float | None:
    if self.gflops_per_image is None:
      return None
    return self.gflops_per_image * self.img_per_s / 1e3


class Runner:
  """One framework's benchmark: `compile()` once, then `run(n)` timed rounds."""

  name: str
  batch_size: int
  gflops_per_image: float | None = None

  def __init__(self):
    self.times: list[float] = []
    self.compile_s = 0.0
    self.peak_mem: int | None = None
    self.compiled = False

  def compile(self) -> None:
    """Compiles (JAX, torch.compile) and runs one step; later calls do nothing."""
    if not self.compiled:
      self._compile()
      self.compiled = True

  def _compile(self) -> None:
    raise NotImplementedError

  def step(self) -> None:
    raise NotImplementedError

  def sync(self) -> None:
    raise NotImplementedError

  def device_peak_mem(self) -> int | None:
    return None

  def timed_round(self, steps: int) -> None:
    t0 = time.perf_counter()
    for _ in range(steps):
      self.step()
    self.sync()
    self.times.append((time.perf_counter() - t0) / steps)
    self.peak_mem = self.device_peak_mem()

  def result(self) -> Result:
    return Result(self.name, self.times, self.compile_s, self.peak_mem, self.batch_size, self.gflops_per_image,
                  getattr(self, "series", self.name))


class JaxRunner(Runner):

  def __init__(self, model_name: str, batch_size: int, image_size: int, mode: str, dtype: str,
               depthwise_impl: str = "auto", remat: bool = False, micro_batch_size: int = 0,
               chunk_elements: int | str = "auto"):
    super().__init__()
    import jax
    import jax.numpy as jnp
    import optax

    from focalnet_jax import create_model
    from focalnet_jax.kernels import depthwise
    from focalnet_jax.train import sharding

    impl = depthwise.default_impl() if depthwise_impl == "auto" else depthwise_impl
    num_micro = 1
    if mode == "train" and micro_batch_size and micro_batch_size < batch_size:
      if batch_size % micro_batch_size:
        raise SystemExit(f"--micro-batch-size {micro_batch_size} does not divide --batch-size {batch_size}.")
      num_micro = batch_size // micro_batch_size
    model = create_model(model_name, dtype=jnp.dtype(dtype), depthwise_impl=depthwise_impl, remat=remat,
                         chunk_elements=chunk_elements)
    micro = batch_size // num_micro
    sizes = model.stage_chunk_sizes(micro, image_size, image_size, train=mode == "train")
    chunks = ",".join(str(c or micro) for c in sizes) if any(c and c < micro for c in sizes) else ""
    details = [impl] + (["remat"] if remat else []) + (
        [f"micro-batch {micro}"] if num_micro > 1 else []) + (
        [f"stage chunks {chunks}"] if chunks else [])
    self.name = f"jax ({', '.join(details)})"
    self.series = f"jax ({', '.join(details[:-1] + ['stage chunks'] if chunks else details)})"
    self.batch_size = batch_size
    self.mode = mode
    self.jax = jax
    self.model = model
    rng = np.random.default_rng(0)
    self.images = jnp.asarray(rng.standard_normal((batch_size, image_size, image_size, 3), np.float32))
    self.labels = jnp.asarray(rng.integers(0, model.num_classes, batch_size), jnp.int32)
    t0 = time.perf_counter()
    variables = jax.jit(model.init)(jax.random.key(0), self.images[:1])
    params = variables["params"]
    if mode == "infer":
      fn = jax.jit(lambda p, x: model.apply({"params": p}, x))
      self.state = params
      self.executable = fn.lower(params, self.images).compile()
      self._step = lambda: self.executable(self.state, self.images)
    else:
      tx = optax.chain(optax.clip_by_global_norm(5.0), optax.adamw(1e-3, weight_decay=0.05))

      def train_step(state, x, y, key):
        p, opt_state = state

        def loss_fn(p, x, y, key):
          logits = model.apply({"params": p}, x, train=True, rngs={"dropout": key})
          return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = sharding.accumulate_gradients(jax.value_and_grad(loss_fn), p, (x, y), key, num_micro)
        updates, opt_state = tx.update(grads, opt_state, p)
        return (optax.apply_updates(p, updates), opt_state), loss

      self.state = (params, tx.init(params))
      fn = jax.jit(train_step, donate_argnums=(0,))
      key = jax.random.key(1)
      self.executable = fn.lower(self.state, self.images, self.labels, key).compile()

      def step():
        self.state, self.out = self.executable(self.state, self.images, self.labels, key)

      self._step = step
    self.compile_s = time.perf_counter() - t0
    self.out = None
    try:
      from focalnet_jax.tools.summary import count_flops

      macs = count_flops(model, image_size)
      self.gflops_per_image = 2 * macs / 1e9 * (3 if mode == "train" else 1)
    except Exception:  # noqa: BLE001 - FLOPs are informative, never fatal
      self.gflops_per_image = None

  def _compile(self) -> None:
    self.step()
    self.sync()

  def step(self) -> None:
    out = self._step()
    if self.mode == "infer":
      self.out = out

  def sync(self) -> None:
    self.jax.block_until_ready(self.out if self.mode == "infer" else self.state)

  def device_peak_mem(self) -> int | None:
    dev = self.jax.devices()[0]
    if dev.platform == "cpu":
      return None
    stats = dev.memory_stats() or {}
    return stats.get("peak_bytes_in_use")


_TORCHVISION_STUBS = []  # the Library must stay alive for its operators to stay registered


def register_torchvision_stubs() -> None:
  """Defines the two torchvision operators its CPU wheel needs before it can be imported.

  timm imports torchvision, and so does transformers when it is installed. Idempotent.
  """
  import torch

  if not _TORCHVISION_STUBS:
    lib = torch.library.Library("torchvision", "FRAGMENT")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _TORCHVISION_STUBS.append(lib)


def import_timm():
  """timm, after registering the two torchvision operators its CPU wheel needs to import."""
  register_torchvision_stubs()
  import timm

  return timm


class TimmRunner(Runner):

  def __init__(self, model_name: str, batch_size: int, image_size: int, mode: str, dtype: str,
               use_compile: bool, drop_path_rate: float | None = None):
    super().__init__()
    import torch

    timm = import_timm()
    self.torch = torch
    self.mode = mode
    self.batch_size = batch_size
    self.cuda = torch.cuda.is_available()
    device = "cuda" if self.cuda else "cpu"
    self.name = f"timm {'torch.compile' if use_compile else 'eager'}" + (" (AMP, channels-last)" if dtype == "bfloat16" else "")
    if model_name not in timm.list_models("focalnet*"):
      raise SystemExit(f"timm has no {model_name!r} to compare with; it has {timm.list_models('focalnet*')}.")
    # Same stochastic depth as ours (timm's default, 0.1, differs from the recipe's per-variant rate).
    kwargs = {} if drop_path_rate is None else {"drop_path_rate": drop_path_rate}
    model = timm.create_model(model_name, pretrained=False, **kwargs).to(device)
    memory_format = torch.channels_last if self.cuda else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    self.images = torch.randn(batch_size, 3, image_size, image_size, device=device).to(memory_format=memory_format)
    self.labels = torch.randint(0, model.num_classes, (batch_size,), device=device)
    self.autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    if mode == "infer":
      model.eval()
    else:
      model.train()
      self.opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    self.model = torch.compile(model) if use_compile else model
    self.use_compile = use_compile

  def _forward_backward(self):
    torch = self.torch
    if self.mode == "infer":
      with torch.inference_mode(), self.autocast:
        return self.model(self.images)
    with self.autocast:
      loss = torch.nn.functional.cross_entropy(self.model(self.images), self.labels)
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
    self.opt.step()
    return loss

  def _compile(self) -> None:
    t0 = time.perf_counter()
    self.step()
    self.sync()
    self.compile_s = time.perf_counter() - t0 if self.use_compile else 0.0
    if self.cuda:
      self.torch.cuda.reset_peak_memory_stats()

  def step(self) -> None:
    self._forward_backward()

  def sync(self) -> None:
    if self.cuda:
      self.torch.cuda.synchronize()

  def device_peak_mem(self) -> int | None:
    return self.torch.cuda.max_memory_allocated() if self.cuda else None


def runner_specs(args) -> list[str]:
  """The frameworks to compare, in table order (ours first): one JAX row per micro-batch size."""
  specs = [f"jax:{m}" for m in micro_batch_sizes(args)]
  if args.compare == "timm":
    specs.append("timm")
    if not args.no_torch_compile:
      specs.append("timm-compile")
  return specs


def micro_batch_sizes(args) -> list[int]:
  sizes = [int(m) for m in str(args.micro_batch_size).split(",")]
  return sizes if args.mode == "train" else sizes[:1]


def chunk_elements(value: str) -> int | str:
  return value if value == "auto" else int(value)


def make_runner(args, spec: str, image_size: int) -> Runner:
  if spec.startswith("jax:"):
    return JaxRunner(args.model, args.batch_size, image_size, args.mode, args.dtype, args.depthwise_impl,
                     args.remat, int(spec.split(":")[1]), chunk_elements(args.chunk_elements))
  from focalnet_jax import create_model

  return TimmRunner(args.model, args.batch_size, image_size, args.mode, args.dtype,
                    use_compile=spec == "timm-compile",
                    drop_path_rate=create_model(args.model).drop_path_rate)


def make_runners(args, image_size: int) -> list[Runner]:
  runners = []
  for spec in runner_specs(args):
    try:
      runner = make_runner(args, spec, image_size)
      if spec == "timm-compile":
        runner.compile()
    except Exception as e:  # noqa: BLE001 - torch.compile is optional; report and go on
      if spec != "timm-compile":
        raise
      print(f"torch.compile unavailable here ({type(e).__name__}: {e}); eager only.", file=sys.stderr)
      continue
    runners.append(runner)
  return runners


def child_peak_rss(argv: list[str], index: int) -> int | None:
  """Peak RSS (bytes) of a child process running only runner `index` for a few steps."""
  cmd = [sys.executable, "-m", "focalnet_jax.benchmark", *argv, "--memory-child", str(index)]
  proc = subprocess.run(cmd, capture_output=True, text=True)
  for line in proc.stdout.splitlines()[::-1]:
    if line.startswith("{"):
      return json.loads(line)["peak_rss_bytes"]
  print(f"memory child {index} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
  return None


def _memory_child(args) -> None:
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
  for r in runners:
    r.compile()
    r.step()  # one more untimed step: allocator and caches warm
    r.sync()
  for _ in range(rounds):
    for r in runners:
      r.timed_round(steps)
  return [r.result() for r in runners]


def _fmt_mem(b: int | None) -> str:
  return "-" if b is None else f"{b / 2**30:.2f} GiB"


def format_table(results: list[Result], title: str) -> str:
  base = results[0]
  rows = [
      "| framework | img/s | ms/step | compile s | peak mem | TFLOP/s | speed vs first | mem vs first |",
      "|---|---|---|---|---|---|---|---|",
  ]
  for r in results:
    tf = r.tflops()
    mem_ratio = (
        f"{r.peak_mem_bytes / base.peak_mem_bytes:.2f}x" if r.peak_mem_bytes and base.peak_mem_bytes else "-"
    )
    rows.append(
        f"| {r.name} | {r.img_per_s:.1f} | {r.median_step_s * 1e3:.0f} | {r.compile_s:.1f} | "
        f"{_fmt_mem(r.peak_mem_bytes)} | {'-' if tf is None else f'{tf:.3f}'} | "
        f"{r.img_per_s / base.img_per_s:.2f}x | {mem_ratio} |"
    )
  return f"{title}\n\n" + "\n".join(rows)


def machine_description() -> str:
  import jax

  dev = jax.devices()[0]
  if dev.platform == "cpu":
    # Host-allocator tuning changes CPU timings (README, Benchmarks): say when it is on.
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return f"CPU, {os.cpu_count()} cores ({jax.device_count()} JAX devices)" + (
        f", GLIBC_TUNABLES={tunables}" if tunables else "")
  return f"{dev.device_kind} ({dev.platform})"


def run_sweep(args, sizes: list[int]) -> str:
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, pts in points.items():
      ax.plot([p for p, _ in pts], [m for _, m in pts], "o-", label=name)
    ax.set_xlabel("pixels per image")
    ax.set_ylabel("ms per image")
    ax.set_title(f"{args.model} {args.mode} {args.dtype}, batch {args.batch_size}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.plot)
    lines.append(f"\nplot written to {args.plot}")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default="focalnet_tiny_srf")
  p.add_argument("--batch-size", type=int, default=8)
  p.add_argument("--image-size", type=int, default=224)
  p.add_argument("--mode", choices=("infer", "train"), default="infer")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--depthwise-impl", default="auto", help="depthwise conv implementation (see focalnet_jax.ops)")
  p.add_argument("--remat", action="store_true", help="rematerialise each block in the backward pass")
  p.add_argument("--micro-batch-size", default="0",
                 help="train: run the step's forward/backward over micro-batches of this size and "
                      "accumulate (the update is the whole batch's); 0 = whole batch. A comma list "
                      "gives one JAX row each, e.g. 0,2")
  p.add_argument("--chunk-elements", default="auto",
                 help="FocalNet.chunk_elements: activation elements per stage chunk; 0 = whole batch")
  p.add_argument("--compare", choices=("none", "timm"), default="none")
  p.add_argument("--no-torch-compile", action="store_true", help="with --compare timm: eager only")
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--steps", type=int, default=3, help="steps per timed round")
  p.add_argument("--sweep", default="", help="comma-separated image sizes: cost against pixel count")
  p.add_argument("--plot", default="", help="with --sweep: write a PNG plot here")
  p.add_argument("--no-memory", action="store_true", help="CPU: skip the per-framework memory children")
  p.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)

  when = time.strftime("%Y-%m-%d")
  title = (
      f"{args.model}, {args.mode}, {args.dtype}, batch {args.batch_size}, {{size}} px — "
      f"{machine_description()}, {when}"
  )
  if args.sweep:
    sizes = [int(s) for s in args.sweep.split(",")]
    print(title.format(size="/".join(map(str, sizes))))
    print(run_sweep(args, sizes))
    return
  if args.memory_child is not None:
    _memory_child(args)
    return
  runners = make_runners(args, args.image_size)
  results = measure(runners, args.rounds, args.steps)
  if results and results[0].peak_mem_bytes is None and not args.no_memory:
    child_argv = [a for a in (argv if argv is not None else sys.argv[1:])]
    for i, r in enumerate(results):
      r.peak_mem_bytes = child_peak_rss(child_argv, i)
  print(format_table(results, title.format(size=args.image_size)))


if __name__ == "__main__":
  main()
