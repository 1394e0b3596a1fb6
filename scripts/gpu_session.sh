#!/usr/bin/env bash
# The GPU check in ONE call of at most 8 minutes on a lent NVIDIA GPU machine (this workplace's
# device tool lends 15 minutes a session, the machine's start included), most important first:
#
#   1. versions: GPU, driver, jax and the packages below;
#   2. the GPU-only tests: the Mosaic GPU focal context kernels (forward, backward) compiled for
#      the GPU, not interpreted, against XLA, and their model-level values and gradients;
#   3. the side-by-side benchmark: FocalNet-T training and inference steps against timm (eager and
#      torch.compile), then with focal_context_impl='mosaic';
#   4. if time is left: the TF-free tests on the GPU, the depthwise impls, the quickstart in bf16.
#
# It stops starting steps when fewer than MIN_STEP_S seconds of CALL_S (default 450: 8 minutes less
# the wheels' install and the transfers) are left, and caps every step at the time left, so a slow
# step costs the steps after it, never what came before: summary.txt, rewritten after every step,
# says of each step ok / failed / timed out / skipped, and log.txt holds every step's output.
# Both lie under $OUT (the tool brings back at most 8 files); the last lines printed are the summary.
#
# The GPU image has jax 0.11.2 (with its CUDA plugin), flax, optax, orbax, torch and timm, but no
# TensorFlow, no ml_collections and no network. Before the call, here (repository root):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl ml-collections==1.1.0
# then, with the device tool: run(command="bash scripts/gpu_session.sh", carry=[".whl"], timeout_s=480).
# A rehearsal on CPU: TEST_PLATFORMS=cpu CALL_S=120 OUT=/tmp/gpu_rehearsal bash scripts/gpu_session.sh
set -uo pipefail
OUT=${OUT:-/tmp/focalnet_gpu}
CALL_S=${CALL_S:-450}
MIN_STEP_S=${MIN_STEP_S:-20}
PLATFORMS=${TEST_PLATFORMS:-cuda,cpu}
deadline=$((SECONDS + CALL_S))
mkdir -p "$OUT"
: >"$OUT/log.txt"
: >"$OUT/summary.txt"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >>"$OUT/log.txt" 2>&1 ||
      { echo "the wheels in .whl did not install: see log.txt" | tee "$OUT/summary.txt"; exit 1; }
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3

step() {  # $1: its name, $2: the most seconds it may take, rest: the command. Appends to log.txt.
  local name=$1 cap=$2 left=$((deadline - SECONDS)) start=$SECONDS rc=0 tail_line status
  shift 2
  if [ "$left" -lt "$MIN_STEP_S" ]; then
    echo "$name: skipped, $left s of $CALL_S s left" >>"$OUT/summary.txt"
    return
  fi
  [ "$cap" -lt "$left" ] || cap=$left
  printf '\n==== %s (at most %d s) ====\n' "$name" "$cap" >>"$OUT/log.txt"
  local part="$OUT/current_step.txt"  # kept if the call is cut off mid-step
  if declare -F "$1" >/dev/null; then  # a function of this script: `timeout` runs programs only
    set -- bash -c "$(declare -f "$1"); $1"
  fi
  timeout -k 5 "$cap" "$@" >"$part" 2>&1 || rc=$?
  cat "$part" >>"$OUT/log.txt"
  case $rc in
    0) status=ok ;;
    124|137) status="timed out after $cap s" ;;
    *) status="failed (exit $rc)" ;;
  esac
  tail_line=$(grep -E '^\| |passed|failed|error' "$part" | grep -v -- '---' | tail -n 6 | tr '\n' ';')
  rm -f "$part"
  echo "$name: $status, $((SECONDS - start)) s: $tail_line" >>"$OUT/summary.txt"
}

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

depthwise() {  # the depthwise conv of each FocalNet-T stage, forward + backward, per impl (bf16, b128)
  python3 - <<'PY'
import time, jax, jax.numpy as jnp
from focalnet_jax.kernels import depthwise
for (h, c, k) in ((56, 96, 3), (56, 96, 5), (28, 192, 3), (14, 384, 3), (7, 768, 3)):
  x = jax.random.normal(jax.random.key(0), (128, h, h, c), jnp.bfloat16)
  w = jax.random.normal(jax.random.key(1), (k, k, 1, c), jnp.bfloat16)
  for impl in ("xla", "shift"):
    f = jax.jit(jax.grad(lambda x, w: jnp.sum(depthwise.depthwise_conv(x, w, impl).astype(jnp.float32) ** 2), (0, 1)))
    jax.block_until_ready(f(x, w)); t = time.perf_counter()
    for _ in range(20): out = f(x, w)
    jax.block_until_ready(out); print(f"| {h}x{h}x{c} k{k} | {impl} | {(time.perf_counter() - t) / 20 * 1e3:.3f} ms |")
PY
}

bench=(python3 -m focalnet_jax.tools.benchmark --model focalnet_tiny_srf --batch-size 128 --dtype bfloat16
       --rounds 5 --steps 5)
# Tests on the GPU as the default backend; the 8-device sharding tests need 8 devices: left out.
gpu_tests=(env JAX_PLATFORMS="$PLATFORMS" python3 -m pytest -q -p no:cacheprovider)

step versions 60 versions
step "mosaic kernels compiled (tests)" 150 "${gpu_tests[@]}" tests/test_mosaic_focal_context.py \
    tests/test_mosaic_focal_backward.py tests/test_focal_context.py -k "mosaic and not sharded"
step "bench: T train vs timm" 150 "${bench[@]}" --mode train --compare timm --torch-compile-modes default
step "bench: T infer vs timm" 90 "${bench[@]}" --mode infer --compare timm --torch-compile-modes default
step "bench: T infer, mosaic context" 60 "${bench[@]}" --mode infer --focal-context mosaic
step "bench: T train, mosaic context" 60 "${bench[@]}" --mode train --focal-context mosaic
step "TF-free tests on the GPU" 120 "${gpu_tests[@]}" tests/test_network.py tests/test_step.py \
    tests/test_arrays.py tests/test_summary.py tests/test_aligned_projection.py tests/test_aot.py
step "depthwise impls" 60 depthwise
step "quickstart, bf16" 150 python3 train.py --config configs/quickstart.py --workdir /tmp/qs_bf16 \
    --config.model.dtype=bfloat16
echo "== $((CALL_S - (deadline - SECONDS))) s of $CALL_S s used" >>"$OUT/summary.txt"
cat "$OUT/summary.txt"
