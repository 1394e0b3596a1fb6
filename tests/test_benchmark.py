"""The benchmark CLI runs end to end and reports what it measured, one row per configuration;
its training row times the trainer's own step."""
import argparse
import re
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focalnet_jax.kernels import depthwise
from focalnet_jax.tools import benchmark
from focalnet_jax.train import optim
from focalnet_jax.train import step as step_lib
from torch_refs import import_timm


def test_train_benchmark_prints_one_row_per_micro_batch_size_and_timm(capsys, tiny_config):
  import_timm()
  benchmark.main([  # our rows on a width-8 model (seconds to compile), timm's full FocalNet-T
      "--model", "focalnet_tiny_srf", "--config", tiny_config, "--batch-size", "2", "--image-size", "32",
      "--mode", "train", "--micro-batch-size", "0,1", "--compare", "timm", "--no-torch-compile", "--no-memory",
      "--peak-tflops", "none", "--rounds", "1", "--steps", "1",
  ])
  out = capsys.readouterr().out
  rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| framework")]
  names = [row.split("|")[1].strip() for row in rows]
  impl = depthwise.default_impl()  # the row names the depthwise conv 'auto' resolved to
  assert names == [f"jax ({impl})", f"jax ({impl}, micro-batch 1)", "timm eager"]
  for row in rows:
    img_s, ms = (float(v) for v in row.split("|")[2:4])
    assert img_s > 0 and ms > 0
    # img/s is the batch over the step time; both are printed rounded (to 0.1 img/s and to 1 ms), so
    # the step time that img/s implies must fall in the printed ms's rounding interval, give or take
    # img/s's own rounding (which matters when a slow step gives ~1 img/s).
    assert 2e3 / (img_s + 0.05) <= ms + 0.5 and 2e3 / max(img_s - 0.05, 1e-9) >= ms - 0.5, (img_s, ms)
  assert re.search(r"train, float32, batch 2, 32 px", out)


def test_micro_batch_size_must_divide_the_batch():
  with pytest.raises(SystemExit, match="does not divide"):
    benchmark.main(["--batch-size", "4", "--image-size", "32", "--mode", "train",
                    "--micro-batch-size", "3", "--no-memory", "--rounds", "1", "--steps", "1"])


def test_timm_is_built_with_our_stochastic_depth():
  # timm's FocalNets default to drop_path_rate 0.1; ours follow the recipe (0.2 for T). The
  # training comparison must regularise (and spend) the same in both.
  import_timm()
  args = argparse.Namespace(model="focalnet_tiny_srf", batch_size=1, mode="train", dtype="float32")
  runner = benchmark.make_runner(args, "timm", 32)
  last = runner.model.layers[-1].blocks[-1].drop_path1
  assert last.drop_prob == pytest.approx(0.2)


def test_title_names_host_allocator_tuning(monkeypatch):
  monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
  assert benchmark.machine_description().endswith("GLIBC_TUNABLES=glibc.malloc.hugetlb=1")
  monkeypatch.delenv("GLIBC_TUNABLES")
  assert "GLIBC_TUNABLES" not in benchmark.machine_description()


@pytest.fixture
def tiny_config(tmp_path):
  """A config file: the default recipe with a two-stage, width-8 model (seconds to compile)."""
  path = tmp_path / "tiny.py"
  path.write_text(textwrap.dedent("""
      from configs import default

      def get_config(arg=None):
        c = default.get_config(arg)
        c.model.embed_dim, c.model.depths, c.model.num_classes = 8, (1, 1), 5
        return c
  """))
  return str(path)


def test_training_row_times_the_trainers_step(tiny_config):
  args = benchmark.parser().parse_args([
      "--config", tiny_config, "--batch-size", "4", "--image-size", "32", "--mode", "train", "--ema-decay", "0.5"])
  runner = benchmark.make_runner(args, "jax:2", 32)
  assert runner.name == f"jax ({runner.model.execution.depthwise}, micro-batch 2, EMA)"
  config = runner.config  # the paper's recipe from the config file, at the benchmark's sizes
  assert (config.mixup_alpha, config.cutmix_alpha, config.label_smoothing, config.grad_clip_norm) == (0.8, 1.0, 0.1, 5.0)
  assert (config.batch_size, config.grad_accum_steps, config.ema_decay, config.model.dtype) == (4, 2, 0.5, "float32")
  start = jax.tree.map(np.array, runner.state)  # a copy: the runner donates its state
  runner.compile()
  # One timed step is one update of the trainer's step function on the same state, batch and rng.
  lr_fn = optim.lr_schedule(optim.resolve_schedule(config, benchmark.NUM_TRAIN))
  step_fn = step_lib.make_train_step(runner.model, optim.make_optimizer(config, lr_fn), config, 5, lr_fn)
  expected, _ = jax.jit(step_fn)(start, runner.batch, runner.base_rng)
  assert int(runner.state["step"]) == 1 and "ema_params" in runner.state
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), runner.state, expected)


def test_inference_row_names_its_stage_chunks(tiny_config):
  # Stage inputs of 8x8x8 and 4x4x16 elements per image: a 1000-element budget takes the
  # smallest chunk that keeps the batch even over the test's 8 CPU devices, 8 images.
  args = benchmark.parser().parse_args(["--config", tiny_config, "--batch-size", "16", "--chunk-elements", "1000"])
  runner = benchmark.make_runner(args, "jax:0", 32)
  assert runner.name == f"jax ({runner.model.execution.depthwise}, stage chunks 8,8)"
  assert runner.series == f"jax ({runner.model.execution.depthwise}, stage chunks)"
  runner.compile()
  assert runner.out.shape == (16, 5)


def test_compile_modes_give_one_timm_row_each():
  args = benchmark.parser().parse_args(["--compare", "timm", "--torch-compile-modes", "default,max-autotune"])
  assert benchmark.runner_specs(args) == ["jax:0", "timm", "timm-compile:default", "timm-compile:max-autotune"]
  args = benchmark.parser().parse_args(["--compare", "timm", "--no-torch-compile"])
  assert benchmark.runner_specs(args) == ["jax:0", "timm"]


def test_table_reports_mfu_against_the_peak_and_bandwidth_from_bytes_per_step(tiny_config):
  args = benchmark.parser().parse_args(["--config", tiny_config, "--batch-size", "8", "--chunk-elements", "0"])
  runner = benchmark.make_runner(args, "jax:0", 32)
  assert runner.bytes_per_step and runner.bytes_per_step > runner.images.nbytes  # reads at least the images
  result = benchmark.Result("ours", [0.5], 1.0, None, 8, gflops_per_image=25.0, bytes_per_step=4e9)
  table = benchmark.format_table([result], "title", peak_tflops=1.6)
  row = next(line for line in table.splitlines() if line.startswith("| ours"))
  cells = [c.strip() for c in row.split("|")[1:-1]]
  # 8 images / 0.5 s = 16 img/s; 16 x 25 GFLOP = 0.4 TFLOP/s = 25% of 1.6; 4 GB / 0.5 s = 8 GB/s.
  assert cells[1:3] == ["16.0", "500"] and cells[5:8] == ["0.400", "25.0%", "8"]
  assert "MFU against a measured 1.6 TFLOP/s" in table


def test_norm_dtype_option_sets_the_field_and_names_the_row(tiny_config):
  args = benchmark.parser().parse_args(["--config", tiny_config, "--norm-dtype", "bfloat16"])
  assert benchmark.benchmark_config(args, 32, 0).model.norm_dtype == "bfloat16"
  runner = benchmark.make_runner(args, "jax:0", 32)
  assert runner.model.norm_dtype == jnp.bfloat16 and runner.name.endswith(", bfloat16 norms)")
  plain = benchmark.make_runner(benchmark.parser().parse_args(["--config", tiny_config]), "jax:0", 32)
  assert plain.model.norm_dtype is None and "norms" not in plain.name
