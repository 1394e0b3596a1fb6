#!/usr/bin/env bash
# Everything the GPU work needs installed, checked and measured, in four calls on a lent NVIDIA GPU
# machine (this workplace's device tool: each call at most 10 minutes, 30 minutes a session), in
# the order of what matters most, so that a short session still ends with the headline numbers:
#
#   bash scripts/gpu_session.sh bench      # depthwise impls, FocalNet-T train/infer against timm
#   bash scripts/gpu_session.sh check      # versions, TF-free tests on the GPU, the quickstart in
#                                          # bf16 (twice, also with deterministic ops), kill + resume
#   bash scripts/gpu_session.sh variants   # execution choices and XLA flags on the T training step
#   bash scripts/gpu_session.sh scale      # larger batches, T-lrf, S and B against timm
#
# Each call stops starting commands when fewer than 30 s of its CALL_S seconds (default 570: the
# 10-minute call less the start and the transfers) are left, and caps every command at the time
# left, so a slow command costs the rows after it, never the files before it; a skipped row says
# so in its file and in the summary.
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
CALL_S=${CALL_S:-570}
started=$SECONDS

run_capped() {  # $1: the most seconds it may take, $2: its output file, rest: the command
  local cap=$1 out=$2 left=$((CALL_S - (SECONDS - started)))
  shift 2
  if [ "$left" -lt 30 ]; then
    echo "skipped: $left s of this call's $CALL_S s were left" >"$out"
    summary+=("skipped (out of time): $(basename "$out")")
    return 124
  fi
  timeout "$((cap < left ? cap : left))" "$@" >"$out" 2>&1
}
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
  run_capped 180 "$dir.log" python3 train.py --config configs/quickstart.py --workdir "$dir" \
      --config.model.dtype=bfloat16 ${QS_FLAGS:-} "$@"
}

losses() { python3 -c "import json,sys; print([r['loss'] for r in map(json.loads, open(sys.argv[1])) if r['split']=='train'])" "$1/metrics.jsonl" 2>&1; }

check() {
  versions >"$OUT/versions.txt" 2>&1; cat "$OUT/versions.txt"
  # Tests that need no TensorFlow and no 8-device mesh; the GPU is the default backend.
  JAX_PLATFORMS=${TEST_PLATFORMS:-cuda,cpu} run_capped 200 "$OUT/tests.txt" python3 -m pytest -q -p no:cacheprovider \
      tests/test_network.py tests/test_step.py tests/test_arrays.py tests/test_summary.py \
      tests/test_aligned_projection.py tests/test_aot.py
  summary+=("tests: $(tail -n 1 "$OUT/tests.txt")")
  # The Mosaic GPU focal context kernels (forward, backward) compiled and run on the GPU against XLA;
  # its model-level values and gradients (the 8-device sharding test needs 8 devices: left out).
  JAX_PLATFORMS=${TEST_PLATFORMS:-cuda,cpu} run_capped 150 "$OUT/tests_mosaic.txt" python3 -m pytest -q \
      -p no:cacheprovider tests/test_mosaic_focal_context.py tests/test_mosaic_focal_backward.py tests/test_focal_context.py \
      -k "mosaic and not sharded"
  summary+=("mosaic focal context tests: $(tail -n 1 "$OUT/tests_mosaic.txt")")
  for run in a b; do quickstart "$OUT/qs_$run"; done
  for run in c d; do XLA_FLAGS=--xla_gpu_deterministic_ops=true quickstart "$OUT/qs_$run"; done
  for run in a b c d; do summary+=("quickstart $run: $(grep -o '"top1": [0-9.]*' "$OUT/qs_$run.log" | tail -1)"); done
  [ "$(losses "$OUT/qs_a")" == "$(losses "$OUT/qs_b")" ] && same=yes || same=no
  [ "$(losses "$OUT/qs_c")" == "$(losses "$OUT/qs_d")" ] && det=yes || det=no
  summary+=("same losses, same seed: default flags $same, --xla_gpu_deterministic_ops $det")
  if [ $((CALL_S - (SECONDS - started))) -lt 120 ]; then
    summary+=("skipped (out of time): kill + resume"); return
  fi
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

t_train() {  # $1: the most seconds, $2: the row's name, rest: flags; FocalNet-T srf training at b128
  local cap=$1 name=$2; shift 2
  run_capped "$cap" "$OUT/bench_t_train_$name.txt" python3 -m focalnet_jax.benchmark --model focalnet_tiny_srf \
      --mode train --batch-size 128 "${common[@]}" "$@"
}

bench() {
  versions >"$OUT/versions.txt" 2>&1
  # The headline first: our training and inference step against timm eager and torch.compile.
  t_train 300 timm --compare timm --torch-compile-modes default,max-autotune
  run_capped 180 "$OUT/bench_t_infer.txt" python3 -m focalnet_jax.benchmark --model focalnet_tiny_srf --mode infer \
      --batch-size 128 "${common[@]}" --compare timm --torch-compile-modes default,max-autotune
  # The focal context in one Mosaic GPU kernel (kernels/mosaic_focal_context.py): inference is
  # where it saves most (no recomputation); the compiler's plan: 22.5 -> 21.4 GB per step.
  run_capped 90 "$OUT/bench_t_infer_mosaic.txt" python3 -m focalnet_jax.benchmark --model focalnet_tiny_srf \
      --mode infer --batch-size 128 "${common[@]}" --focal-context-impl mosaic
  # The depthwise conv of each FocalNet-T stage, forward + backward, per implementation (bf16, b128).
  run_capped 90 "$OUT/depthwise.txt" python3 - <<'PY'
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
  bench_summary
}

variants() {  # each execution choice on bench's FocalNet-T training row (its default)
  # The compiler's plan for the same step (no device needed): its traffic floor beside the measured ms.
  run_capped 120 "$OUT/aot_t_train.txt" python3 -m focalnet_jax.aot --target h200 --variant depthwise=xla --by-scope 12
  summary+=("aot: $(grep '^| xla' "$OUT/aot_t_train.txt" | head -1)")
  # LayerNorms writing bf16, so a bf16 residual stream (model.norm_dtype; changes values, unlike the
  # rows below): 8% less traffic than bench's default row in the compiler's plan (docs/benchmarks.md).
  t_train 90 norm_bf16 --norm-dtype bfloat16
  # GEMMs through cuBLAS rather than XLA's Triton fusions: 3% less traffic in the compiler's plan;
  # with bf16 norms too, 11% less (58.5 GB/step, the cheapest plan so far).
  XLA_FLAGS=--xla_gpu_enable_triton_gemm=false t_train 90 cublas
  XLA_FLAGS=--xla_gpu_enable_triton_gemm=false t_train 90 cublas_norm_bf16 --norm-dtype bfloat16
  # ('pallas' is left out: it does not lower for a GPU, see kernels/pallas_focal_level.py.)
  for impl in mosaic fused; do t_train 90 "$impl" --focal-context-impl $impl; done
  for remat in dots block; do t_train 90 "remat_$remat" --remat $remat; done  # kernels/remat.py
  t_train 90 f_align8 --f-align 8  # f's matmul writing q, f_z, gates at aligned offsets
  # Inference: 'shift' (its conv fuses with the GELU) and bf16 norms: 1 GB/step under 'xla'.
  run_capped 60 "$OUT/bench_t_infer_shift_norm_bf16.txt" python3 -m focalnet_jax.benchmark \
      --model focalnet_tiny_srf --mode infer --batch-size 128 "${common[@]}" --depthwise-impl shift --norm-dtype bfloat16
  bench_summary
}

scale() {  # larger batches, then the larger models against timm
  for b in 256 512; do
    run_capped 120 "$OUT/bench_t_train_b$b.txt" python3 -m focalnet_jax.benchmark --model focalnet_tiny_srf \
        --mode train --batch-size $b "${common[@]}" --compare timm --no-torch-compile
  done
  # The largest batch that fits: XLA allocates 66.8 GiB at 1024 and 105.5 GiB at 2048 for this
  # step when compiling for an H200 (tools.aot); ours alone (timm may not fit there).
  run_capped 120 "$OUT/bench_t_train_b2048.txt" python3 -m focalnet_jax.benchmark --model focalnet_tiny_srf \
      --mode train --batch-size 2048 --dtype bfloat16 --rounds 3 --steps 3
  for m in focalnet_tiny_lrf focalnet_small_srf focalnet_base_srf; do
    run_capped 150 "$OUT/bench_${m}_train.txt" python3 -m focalnet_jax.benchmark --model $m --mode train \
        --batch-size 128 "${common[@]}" --compare timm --torch-compile-modes default
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
  scale) scale ;;
  *) echo "usage: bash scripts/gpu_session.sh bench|check|variants|scale" >&2; exit 2 ;;
esac
printf '%s\n' "${summary[@]}"
