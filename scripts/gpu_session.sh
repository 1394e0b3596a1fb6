#!/usr/bin/env bash
# Everything the GPU work needs installed, checked and measured, in three calls on a lent NVIDIA GPU
# machine (this workplace's device tool; each call is at most 10 minutes):
#
#   bash scripts/gpu_session.sh check   # versions, TF-free tests on the GPU, the quickstart in
#                                       # bf16 (twice, also with deterministic ops), kill + resume
#   bash scripts/gpu_session.sh bench      # depthwise impls, FocalNet-T train/infer against timm
#   bash scripts/gpu_session.sh variants   # execution choices, XLA flags, batch sizes, T-lrf/S/B
#
# The GPU image has jax, flax, optax, orbax, torch, timm but no TensorFlow and no ml_collections,
# and no network. Before the first call, on the machine with pip access (repository root):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl ml-collections==1.1.0
# and name `.whl` in the call's carry. Everything goes under $OUT (the tool brings it back);
# the last lines printed are a summary. QS_FLAGS adds flags to every quickstart run and
# TEST_PLATFORMS sets JAX_PLATFORMS for the tests (a dry run on CPU: TEST_PLATFORMS=cpu
# QS_FLAGS=--config.num_epochs=12 bash scripts/gpu_session.sh check).
set -uo pipefail
OUT=${OUT:-/tmp/focalnet_gpu}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
summary=()
common=(--dtype bfloat16 --rounds 5 --steps 5)  # every timed row of bench and variants

versions() {
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
  python3 - <<'PY'
import importlib.metadata as m, platform
print("python", platform.python_version())
for p in ("jax", "jaxlib", "jax-cuda13-plugin", "flax", "optax", "orbax-checkpoint", "torch", "timm", "ml-collections"):
  try:
    print(p, m.version(p))
  except m.PackageNotFoundError:
    print(p, "missing")
import jax; print("devices", jax.devices())
PY
}

quickstart() {  # $1: workdir, rest: extra flags
  local dir=$1; shift
  # shellcheck disable=SC2086  # QS_FLAGS is a list of flags
  python3 train.py --config configs/quickstart.py --workdir "$dir" --config.model.dtype=bfloat16 ${QS_FLAGS:-} "$@" \
    >"$dir.log" 2>&1
}

losses() { python3 -c "import json,sys; print([r['loss'] for r in map(json.loads, open(sys.argv[1])) if r['split']=='train'])" "$1/metrics.jsonl"; }

check() {
  versions >"$OUT/versions.txt" 2>&1; cat "$OUT/versions.txt"
  # Tests that need no TensorFlow and no 8-device mesh; the GPU is the default backend.
  JAX_PLATFORMS=${TEST_PLATFORMS:-cuda,cpu} timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_network.py \
      tests/test_step.py tests/test_arrays.py tests/test_summary.py tests/test_aligned_projection.py tests/test_aot.py \
      >"$OUT/tests.txt" 2>&1
  summary+=("tests: $(tail -n 1 "$OUT/tests.txt")")
  # The Mosaic GPU focal context compiled and run on the GPU against XLA (interpreted on CPU);
  # its model-level values and gradients (the 8-device sharding test needs 8 devices: left out).
  JAX_PLATFORMS=${TEST_PLATFORMS:-cuda,cpu} timeout 400 python3 -m pytest -q -p no:cacheprovider \
      tests/test_mosaic_focal_context.py tests/test_focal_context.py -k "mosaic and not sharded" \
      >"$OUT/tests_mosaic.txt" 2>&1
  summary+=("mosaic focal context tests: $(tail -n 1 "$OUT/tests_mosaic.txt")")
  for run in a b; do quickstart "$OUT/qs_$run"; done
  for run in c d; do XLA_FLAGS=--xla_gpu_deterministic_ops=true quickstart "$OUT/qs_$run"; done
  for run in a b c d; do summary+=("quickstart $run: $(grep -o '"top1": [0-9.]*' "$OUT/qs_$run.log" | tail -1)"); done
  [ "$(losses "$OUT/qs_a")" == "$(losses "$OUT/qs_b")" ] && same=yes || same=no
  [ "$(losses "$OUT/qs_c")" == "$(losses "$OUT/qs_d")" ] && det=yes || det=no
  summary+=("same losses, same seed: default flags $same, --xla_gpu_deterministic_ops $det")
  # Kill (SIGTERM) after the step-220 checkpoint, rerun, compare with the uninterrupted run c.
  # python itself in the background (not a shell function), so that the signal reaches it.
  # shellcheck disable=SC2086
  XLA_FLAGS=--xla_gpu_deterministic_ops=true python3 train.py --config configs/quickstart.py \
      --workdir "$OUT/qs_kill" --config.model.dtype=bfloat16 ${QS_FLAGS:-} >"$OUT/qs_kill_first.log" 2>&1 &
  pid=$!
  while [ ! -d "$OUT/qs_kill/checkpoints/220" ] && kill -0 $pid 2>/dev/null; do sleep 0.2; done
  kill -TERM $pid; wait $pid; status=$?
  summary+=("SIGTERM after the step-220 checkpoint: exit $status (75 = preempted, rerun to resume)")
  XLA_FLAGS=--xla_gpu_deterministic_ops=true quickstart "$OUT/qs_kill"
  final() { grep -o '"loss": [0-9.]*, "top1": [0-9.]*' "$1" | tail -1; }
  summary+=("kill+resume: $(final "$OUT/qs_kill.log") vs straight $(final "$OUT/qs_c.log")")
}

bench() {
  versions >"$OUT/versions.txt" 2>&1
  python3 - >"$OUT/depthwise.txt" 2>&1 <<'PY'
# The depthwise conv of each FocalNet-T stage, forward + backward, per implementation (bf16, b128).
import time, jax, jax.numpy as jnp
from focalnet_jax.kernels import depthwise
for (h, c, k) in ((56, 96, 3), (56, 96, 5), (28, 192, 3), (14, 384, 3), (7, 768, 3)):
  x = jax.random.normal(jax.random.key(0), (128, h, h, c), jnp.bfloat16)
  w = jax.random.normal(jax.random.key(1), (k, k, 1, c), jnp.bfloat16)
  for impl in ("xla", "shift"):
    f = jax.jit(jax.grad(lambda x, w: jnp.sum(depthwise.depthwise_conv(x, w, impl).astype(jnp.float32) ** 2), (0, 1)))
    jax.block_until_ready(f(x, w)); t = time.perf_counter()
    for _ in range(20): out = f(x, w)
    jax.block_until_ready(out); print(f"{h}x{h}x{c} k{k} {impl}: {(time.perf_counter() - t) / 20 * 1e3:.3f} ms")
PY
  summary+=("depthwise: $(tr '\n' ';' <"$OUT/depthwise.txt")")
  timeout 420 python3 -m focalnet_jax.benchmark --model focalnet_tiny_srf --mode train --batch-size 128 "${common[@]}" \
      --compare timm --torch-compile-modes default,max-autotune >"$OUT/bench_t_train.txt" 2>&1
  timeout 300 python3 -m focalnet_jax.benchmark --model focalnet_tiny_srf --mode infer --batch-size 128 "${common[@]}" \
      --compare timm --torch-compile-modes default,max-autotune >"$OUT/bench_t_infer.txt" 2>&1
  # The focal context in one Mosaic GPU kernel (kernels/mosaic_focal_context.py): inference is
  # where it saves most (no recomputation); the compiler's plan: 22.5 -> 21.4 GB per step.
  timeout 120 python3 -m focalnet_jax.benchmark --model focalnet_tiny_srf --mode infer --batch-size 128 "${common[@]}" \
      --focal-context-impl mosaic >"$OUT/bench_t_infer_mosaic.txt" 2>&1
  bench_summary
}

variants() {  # each execution choice against bench's rows; larger batches and models
  # The compiler's plan for the same step (no device needed): its traffic floor beside the measured ms.
  timeout 200 python3 -m focalnet_jax.aot --target h200 --variant depthwise=xla --by-scope 12 \
      >"$OUT/aot_t_train.txt" 2>&1
  summary+=("aot: $(grep '^| xla' "$OUT/aot_t_train.txt" | head -1)")
  # ('pallas' is left out: it does not lower for a GPU, see kernels/pallas_focal_level.py.)
  for impl in fused mosaic; do  # the focal-context paths against the reference row above
    timeout 150 python3 -m focalnet_jax.benchmark --model focalnet_tiny_srf --mode train --batch-size 128 \
        "${common[@]}" --focal-context-impl $impl >"$OUT/bench_t_train_$impl.txt" 2>&1
  done
  # GEMMs through cuBLAS rather than XLA's Triton fusions: 3% less traffic in the compiler's plan.
  XLA_FLAGS=--xla_gpu_enable_triton_gemm=false timeout 150 python3 -m focalnet_jax.benchmark \
      --model focalnet_tiny_srf --mode train --batch-size 128 "${common[@]}" >"$OUT/bench_t_train_cublas.txt" 2>&1
  for remat in dots block; do  # what each block keeps for the backward pass (kernels/remat.py)
    timeout 150 python3 -m focalnet_jax.benchmark --model focalnet_tiny_srf --mode train --batch-size 128 \
        "${common[@]}" --remat $remat >"$OUT/bench_t_train_remat_$remat.txt" 2>&1
  done
  for align in 8; do  # f's matmul writing q, f_z, gates at aligned offsets (kernels/aligned_projection.py)
    timeout 150 python3 -m focalnet_jax.benchmark --model focalnet_tiny_srf --mode train --batch-size 128 \
        "${common[@]}" --f-align $align >"$OUT/bench_t_train_f_align$align.txt" 2>&1
  done
  # LayerNorms writing bf16, so a bf16 residual stream (model.norm_dtype; changes values, unlike the
  # rows above): 8% less traffic than bench's default row in the compiler's plan (docs/benchmarks.md).
  timeout 150 python3 -m focalnet_jax.benchmark --model focalnet_tiny_srf --mode train --batch-size 128 \
      "${common[@]}" --norm-dtype bfloat16 >"$OUT/bench_t_train_norm_bf16.txt" 2>&1
  for b in 256 512; do
    timeout 120 python3 -m focalnet_jax.benchmark --model focalnet_tiny_srf --mode train --batch-size $b "${common[@]}" \
        --compare timm --no-torch-compile >"$OUT/bench_t_train_b$b.txt" 2>&1
  done
  # The largest batch that fits: XLA allocates 66.8 GiB at 1024 and 105.5 GiB at 2048 for this
  # step when compiling for an H200 (tools.aot); ours alone (timm may not fit there).
  timeout 150 python3 -m focalnet_jax.benchmark --model focalnet_tiny_srf --mode train --batch-size 2048 \
      --dtype bfloat16 --rounds 3 --steps 3 >"$OUT/bench_t_train_b2048.txt" 2>&1
  for m in focalnet_tiny_lrf focalnet_small_srf focalnet_base_srf; do
    timeout 150 python3 -m focalnet_jax.benchmark --model $m --mode train --batch-size 128 "${common[@]}" \
        --compare timm --torch-compile-modes default >"$OUT/bench_${m}_train.txt" 2>&1
  done
  bench_summary
}

bench_summary() {
  for f in "$OUT"/bench_*.txt; do summary+=("$(basename "$f"):" "$(grep '^| ' "$f" | grep -v -- '---')"); done
}

case "${1:-}" in
  check) check ;;
  bench) bench ;;
  variants) variants ;;
  *) echo "usage: bash scripts/gpu_session.sh check|bench|variants" >&2; exit 2 ;;
esac
printf '%s\n' "${summary[@]}"
