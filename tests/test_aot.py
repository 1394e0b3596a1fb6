"""Compiling for a GPU without one (tools.aot) and the traffic model it reports (tools.hlo_traffic)."""
import importlib.util

import jax
import jax.numpy as jnp
import pytest

from focalnet_jax.tools import aot, hlo_traffic

# A hand-written optimized module in XLA:GPU's form: a cuDNN convolution with its workspace, a
# Triton GEMM fusion, a loop run 4 times, a conditional (the costlier branch counts) and bookkeeping.
_GPU_HLO = """HloModule jit_step, is_scheduled=true

%fused_gelu (param_0: bf16[8,16]) -> bf16[8,16] {
  %param_0 = bf16[8,16]{1,0} parameter(0)
  ROOT %t = bf16[8,16]{1,0} tanh(%param_0)
}

%gemm_computation (p0: bf16[8,16], p1: bf16[16,32]) -> bf16[8,32] {
  %p0 = bf16[8,16]{1,0} parameter(0)
  %p1 = bf16[16,32]{1,0} parameter(1)
  ROOT %dot = bf16[8,32]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%body (arg: (s32[], f32[64])) -> (s32[], f32[64]) {
  %arg = (s32[], f32[64]{0}) parameter(0)
  %i = s32[] get-tuple-element(%arg), index=0
  %v = f32[64]{0} get-tuple-element(%arg), index=1
  %v2 = f32[64]{0} fusion(%v), kind=kLoop, calls=%fused_gelu
  ROOT %out = (s32[], f32[64]{0}) tuple(%i, %v2)
}

%cond (arg.1: (s32[], f32[64])) -> pred[] {
  %arg.1 = (s32[], f32[64]{0}) parameter(0)
  ROOT %c = pred[] constant(true)
}

%small (a: f32[64]) -> f32[64] {
  %a = f32[64]{0} parameter(0)
  ROOT %n = f32[64]{0} negate(%a)
}

%big (b: f32[64]) -> f32[256] {
  %b = f32[64]{0} parameter(0)
  ROOT %bc = f32[256]{0} broadcast(%b), dimensions={}
}

ENTRY %main (x: bf16[8,16], w: bf16[16,32], k: bf16[3,3,1,16], v: f32[64], p: pred[]) -> bf16[8,32] {
  %x = bf16[8,16]{1,0} parameter(0)
  %w = bf16[16,32]{1,0} parameter(1)
  %k = bf16[3,3,1,16]{3,2,1,0} parameter(2)
  %v = f32[64]{0} parameter(3)
  %p = pred[] parameter(4)
  %conv = (bf16[8,16]{1,0}, u8[1048576]{0}) custom-call(%x, %k), custom_call_target="__cudnn$convForward", backend_config={"cudnn_conv_backend_config":{}}
  %y = bf16[8,16]{1,0} get-tuple-element(%conv), index=0
  %t = (s32[], f32[64]{0}) tuple(%p, %v)
  %loop = (s32[], f32[64]{0}) while(%t), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"4"}}
  %branch = f32[64]{0} conditional(%p, %v, %v), branch_computations={%small, %big}
  ROOT %mm = bf16[8,32]{1,0} fusion(%y, %w), kind=kCustom, calls=%gemm_computation, backend_config={"fusion_backend_config":{"kind":"__triton_nested_gemm_fusion"}}
}
"""


def test_traffic_counts_each_kernel_once_per_run_of_its_computation():
  traffic = hlo_traffic.kernel_traffic(hlo_traffic.kernels(_GPU_HLO))
  # conv: reads x (256 B) and k (288 B), writes y (256 B); the 1 MiB workspace is not traffic.
  assert traffic["conv"] == (1, 256 + 288 + 256)
  # GEMM: reads y (256 B) and w (1024 B), writes 512 B.
  assert traffic["gemm"] == (1, 256 + 1024 + 512)
  # The loop body's fusion (reads and writes f32[64]) runs 4 times.
  assert traffic["loop fusion"] == (4, 4 * (256 + 256))
  # The conditional's costlier branch: a broadcast reading 256 B and writing 1 KiB.
  assert traffic["broadcast"] == (1, 256 + 1024)
  assert set(traffic) == {"conv", "gemm", "loop fusion", "broadcast"}


def test_traffic_of_a_compiled_scan_grows_with_its_trip_count():
  """On a program XLA compiled here: each more iteration adds the body's kernels once more."""
  def run(length: int) -> float:
    def f(x):
      y, _ = jax.lax.scan(lambda c, _: (jnp.sin(c) * 2, None), x, None, length=length)
      return jnp.exp(y) + 1
    text = jax.jit(f).lower(jnp.zeros(256)).compile().as_text()
    return sum(b for _, b in hlo_traffic.kernel_traffic(hlo_traffic.kernels(text)).values())

  t5, t10, t15 = run(5), run(10), run(15)
  per_iteration = (t10 - t5) / 5
  assert per_iteration >= 2 * 256 * 4  # at least: read and write the f32[256] carry
  assert t15 - t10 == pytest.approx(5 * per_iteration)


def test_shapes_and_tuples_are_sized_by_element_type():
  assert hlo_traffic.element_bytes("bf16[2,3]{1,0}") == 12
  assert hlo_traffic.element_bytes("(f32[4]{0}, s8[3]{0}, pred[])") == 16 + 3 + 1
  assert hlo_traffic.element_bytes("f8e4m3fn[10]{0}") == 10


def test_a_wrong_variant_or_target_is_named_before_anything_compiles():
  with pytest.raises(SystemExit, match="depthwise, focal_context, remat, f_align, chunk_elements, norm"):
    aot.parse_variant("depthwise=xla,kernel=shift")
  assert aot.parse_variant("focal_context=fused,f_align=8") == ({"focal_context": "fused", "f_align": 8}, None)
  assert aot.parse_variant("depthwise=xla,norm=bfloat16") == ({"depthwise": "xla"}, "bfloat16")
  with pytest.raises(SystemExit, match=r"execution.remat='matmuls' must be one of \('none', 'block', 'dots'\)"):
    aot.parse_variant("remat=matmuls")
  with pytest.warns(FutureWarning, match="write focal_context=fused"):  # the former key, for one release
    assert aot.parse_variant("context=fused") == ({"focal_context": "fused"}, None)
  with pytest.raises(SystemExit, match=r"'norm=bf16': norm takes float32 or bfloat16"):
    aot.parse_variant("norm=bf16")
  with pytest.raises(SystemExit, match="h100, h200"):
    aot.target_config("a100")
  assert "core_count: 132" in aot.target_config("h200")


def _cuda_plugin_installed() -> bool:
  return importlib.util.find_spec("jax_plugins") is not None and (
      importlib.util.find_spec("jax_plugins.xla_cuda13") is not None)


@pytest.mark.skipif(_cuda_plugin_installed(),
                    reason="JAX's CUDA plugin is installed here: the tool would compile")
def test_without_the_cuda_plugin_the_tool_says_what_to_install(capsys):
  with pytest.raises(SystemExit, match=r'pip install "jax\[cuda13\]==' + jax.__version__):
    aot.main(["--variant", "depthwise=xla"])


def test_kernels_are_attributed_to_the_model_scope_they_come_from():
  fwd = "jit(step_fn)/jvp(FocalNet)/FocalNet._forward/FocalNet.run_stage/layers_0/blocks_1/norm1/reduce_sum"
  bwd = "jit(step_fn)/transpose(jvp(FocalNet))/FocalNet._forward/FocalNet.run_stage/layers_2/blocks_0/mlp/fc1/dot_general"
  assert hlo_traffic.scope(fwd) == "forward blocks/norm1"
  assert hlo_traffic.scope(bwd) == "backward blocks/mlp/fc1"
  assert hlo_traffic.scope("jit(step_fn)/add").startswith("other")
  text = _GPU_HLO.replace('custom_call_target="__cudnn$convForward"',
                          f'custom_call_target="__cudnn$convForward", metadata={{op_name="{bwd}"}}')
  found = hlo_traffic.kernels(text)
  by_scope = {s: (n, b) for s, n, b in hlo_traffic.traffic_by_scope(found)}
  assert by_scope["backward blocks/mlp/fc1"] == (1, 256 + 288 + 256)  # the conv, now tagged
  assert sum(b for _, b in by_scope.values()) == sum(b for _, b in hlo_traffic.kernel_traffic(found).values())


def test_a_known_compile_failure_says_how_to_get_around_it():
  tiling = RuntimeError("INTERNAL: Couldn't find output tile sizes that satisfy hlo: %dot.431 = bf16[6272,1539]\nmore")
  assert aot.failure(tiling).endswith("--xla_gpu_enable_triton_gemm=false: GEMMs through cuBLAS)")
  assert aot.failure(ValueError("other\ndetail")) == "ValueError: other"
