"""What the benchmark times: one runner per framework and mode, each compiled once, then stepped.

Our training runner times the trainer's own update (`train.step.make_train_step`, jitted with
the state donated, as train.py runs it): mixup/cutmix and label smoothing on device, forward and
backward over `grad_accum_steps` micro-batches, global-norm clipping, AdamW on the warmup-cosine
schedule, and the EMA of the weights when the config has `ema_decay` > 0. Our inference runner
times `kernels.chunking.apply`, the forward evaluation runs. timm's training step is
cross-entropy on hard labels, clipping and AdamW: the same update but for the on-device mixing
and smoothing, which cost little beside the forward and backward.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any

import ml_collections
import numpy as np


@dataclasses.dataclass
class Result:
  """One framework's timings, as the table reports them."""
  name: str
  step_s: list[float]
  compile_s: float
  peak_mem_bytes: int | None
  batch_size: int
  gflops_per_image: float | None  # multiply-adds x 2 of one image's forward (x3 for training)
  series: str = ""  # the name without per-size details: one line per framework in a sweep plot
  bytes_per_step: float | None = None  # device memory traffic of one step, from XLA's cost analysis

  @property
  def median_step_s(self) -> float:
    """Seconds per step in the median round."""
    return statistics.median(self.step_s)

  @property
  def img_per_s(self) -> float:
    """Images per second at the median step."""
    return self.batch_size / self.median_step_s

  def tflops(self) -> float | None:
    """Achieved TFLOP/s at the median step, from the model's FLOP count."""
    if self.gflops_per_image is None:
      return None
    return self.gflops_per_image * self.img_per_s / 1e3

  def bandwidth_gbs(self) -> float | None:
    """Achieved memory bandwidth (GB/s): the step's bytes accessed over the median step time."""
    return None if self.bytes_per_step is None else self.bytes_per_step / self.median_step_s / 1e9


class Runner:
  """One framework's benchmark: `compile()` once, then `timed_round(steps)` as often as wanted."""

  name: str
  series: str = ""
  batch_size: int
  gflops_per_image: float | None = None
  bytes_per_step: float | None = None

  def __init__(self) -> None:
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
    """Dispatches one step (it may still be running when this returns)."""
    raise NotImplementedError

  def sync(self) -> None:
    """Waits for every dispatched step to finish."""
    raise NotImplementedError

  def device_peak_mem(self) -> int | None:
    """The accelerator allocator's peak in bytes; None on CPU (measured in a child process instead)."""
    return None

  def timed_round(self, steps: int) -> None:
    """Times `steps` steps and records their mean."""
    t0 = time.perf_counter()
    for _ in range(steps):
      self.step()
    self.sync()
    self.times.append((time.perf_counter() - t0) / steps)
    self.peak_mem = self.device_peak_mem()

  def result(self) -> Result:
    """The rounds timed so far."""
    return Result(self.name, self.times, self.compile_s, self.peak_mem, self.batch_size, self.gflops_per_image,
                  self.series or self.name, self.bytes_per_step)


# --- ours --------------------------------------------------------------------------------------


class JaxRunner(Runner):
  """Our model as `config` describes it; subclasses compile the step they time."""

  def __init__(self, config: ml_collections.ConfigDict, num_classes: int, train: bool):
    super().__init__()
    import jax
    import jax.numpy as jnp

    from focalnet_jax.train import state as train_state

    self.jax = jax
    self.config = config
    self.batch_size = config.batch_size
    self.model, _ = train_state.build_model(config, num_classes)
    # A built model has resolved 'auto': the row names the depthwise conv it runs.
    self.details = self.model.execution.describe() + (
        [f"{self.model.norm_dtype} norms"] if self.model.norm_dtype is not None else [])
    size = config.image_size
    rng = np.random.default_rng(0)
    self.images = jnp.asarray(rng.standard_normal((self.batch_size, size, size, 3), np.float32))
    self.labels = jnp.asarray(rng.integers(0, num_classes, self.batch_size), jnp.int32)
    self.out: Any = None
    self.gflops_per_image = _gflops_per_image(self.model, size, train)

  def _name(self, details: list[str], series_details: list[str] | None = None) -> None:
    self.name = f"jax ({', '.join(details)})"
    self.series = f"jax ({', '.join(series_details or details)})"

  def _compile(self) -> None:
    self.step()
    self.sync()

  def sync(self) -> None:
    self.jax.block_until_ready(self.out)

  def device_peak_mem(self) -> int | None:
    dev = self.jax.devices()[0]
    if dev.platform == "cpu":
      return None
    return (dev.memory_stats() or {}).get("peak_bytes_in_use")


def bytes_accessed(executable: Any) -> float | None:
  """Bytes one call of a compiled JAX executable reads and writes, by XLA's cost analysis (None
  where the backend gives none). An estimate of traffic to device memory: fused intermediates
  that stay in registers or caches are not counted."""
  try:
    cost = executable.cost_analysis()
  except Exception:  # noqa: BLE001 - not every backend implements it
    return None
  cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
  value = (cost or {}).get("bytes accessed")
  return float(value) if value else None


def _gflops_per_image(model: Any, image_size: int, train: bool) -> float | None:
  """2 x multiply-adds of one image's forward (x3 for forward + backward); None if uncountable."""
  try:
    from focalnet_jax.tools.summary import count_macs

    return 2 * count_macs(model, image_size) / 1e9 * (3 if train else 1)
  except Exception:  # noqa: BLE001 - FLOPs are informative, never fatal
    return None


def forward_fn(model: Any, chunk_elements: int | str) -> Any:
  """(params, images) -> logits: the chunked forward evaluation runs (`kernels.chunking.apply`)."""
  from focalnet_jax.kernels import chunking

  return lambda p, x: chunking.apply(model, {"params": p}, x, chunk_elements=chunk_elements)


def train_program(model: Any, config: ml_collections.ConfigDict, num_classes: int, num_train: int) -> tuple[Any, Any]:
  """(step_fn, init_fn) of the trainer's update for `config`: `train.step.make_train_step` on the
  warmup-cosine AdamW of `train.optim`, and the state's initialiser (with the EMA if configured)."""
  from focalnet_jax.train import optim
  from focalnet_jax.train import state as train_state
  from focalnet_jax.train import step as train_step

  lr_fn = optim.lr_schedule(optim.resolve_schedule(config, num_train))
  tx = optim.make_optimizer(config, lr_fn)
  # One device, so no micro-batch layout to pin (the trainer pins it over its mesh).
  step_fn = train_step.make_train_step(model, tx, config, num_classes, lr_fn, micro_sharding=None)
  return step_fn, train_state.make_init_fn(model, tx, config.image_size, config.ema_decay > 0)


class JaxInferRunner(JaxRunner):
  """The forward that evaluation runs: `kernels.chunking.apply` with `config.execution.chunk_elements`."""

  def __init__(self, config: ml_collections.ConfigDict, num_classes: int):
    super().__init__(config, num_classes, train=False)
    from focalnet_jax.kernels import chunking

    jax, model = self.jax, self.model
    chunk_elements = model.execution.chunk_elements
    sizes = chunking.stage_chunk_sizes(model, self.batch_size, config.image_size, config.image_size,
                                       chunk_elements, train=False)
    if any(c and c < self.batch_size for c in sizes):  # chunks smaller than the batch: say so
      chunks = ",".join(str(c or self.batch_size) for c in sizes)
      self._name(self.details + [f"stage chunks {chunks}"], self.details + ["stage chunks"])
    else:
      self._name(self.details)
    t0 = time.perf_counter()
    self.params = jax.jit(model.init)(jax.random.key(0), self.images[:1])["params"]
    fn = jax.jit(forward_fn(model, chunk_elements))
    self.executable = fn.lower(self.params, self.images).compile()
    self.compile_s = time.perf_counter() - t0
    self.bytes_per_step = bytes_accessed(self.executable)

  def step(self) -> None:
    self.out = self.executable(self.params, self.images)


class JaxTrainRunner(JaxRunner):
  """The trainer's own update, `train.step.make_train_step`, jitted with the state donated."""

  def __init__(self, config: ml_collections.ConfigDict, num_classes: int, num_train: int):
    super().__init__(config, num_classes, train=True)
    jax = self.jax
    micro = self.batch_size // config.grad_accum_steps
    use_ema = config.ema_decay > 0
    self._name(self.details + ([f"micro-batch {micro}"] if config.grad_accum_steps > 1 else [])
               + (["EMA"] if use_ema else []))
    step_fn, init_fn = train_program(self.model, config, num_classes, num_train)
    t0 = time.perf_counter()
    self.state = jax.jit(init_fn)(jax.random.PRNGKey(config.seed))
    self.batch = {"image": self.images, "label": self.labels}
    self.base_rng = jax.random.PRNGKey(config.seed + 1)
    self.executable = jax.jit(step_fn, donate_argnums=0).lower(self.state, self.batch, self.base_rng).compile()
    self.compile_s = time.perf_counter() - t0
    self.bytes_per_step = bytes_accessed(self.executable)

  def step(self) -> None:
    self.state, _ = self.executable(self.state, self.batch, self.base_rng)
    self.out = self.state


# --- timm ----------------------------------------------------------------------------------------


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


def import_timm() -> Any:
  """timm, after registering the two torchvision operators its CPU wheel needs to import."""
  register_torchvision_stubs()
  import timm

  return timm


class TimmRunner(Runner):
  """timm's FocalNet: inference, or cross-entropy + global-norm clipping (5) + AdamW."""

  def __init__(self, model_name: str, batch_size: int, image_size: int, mode: str, dtype: str,
               use_compile: bool, drop_path_rate: float | None = None, compile_mode: str = "default"):
    super().__init__()
    import torch

    timm = import_timm()
    self.torch = torch
    self.mode = mode
    self.batch_size = batch_size
    self.cuda = torch.cuda.is_available()
    device = "cuda" if self.cuda else "cpu"
    compiled = f"torch.compile{'' if compile_mode == 'default' else f' {compile_mode}'}"
    self.name = f"timm {compiled if use_compile else 'eager'}" + (" (AMP, channels-last)" if dtype == "bfloat16" else "")
    if self.cuda:
      torch.backends.cudnn.benchmark = True  # timm's own training default: the fastest conv algorithms
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
      # The fused (single-kernel) AdamW on GPU, as a tuned PyTorch training script would use.
      self.opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05, fused=self.cuda or None)
    self.model = torch.compile(model, mode=compile_mode) if use_compile else model
    self.use_compile = use_compile

  def _forward_backward(self) -> Any:
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
