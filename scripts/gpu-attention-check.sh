#!/usr/bin/env bash
# gpu-attention-check.sh — the fused (flash) attention of CudaLlama<bf16> on one GPU machine, in one
# go: builds (preset gpu, sm_90a) the GPU model's test suite and its throughput benchmark, then runs
#   1. hdpissa_llama_cuda_tests   (flash kernels vs a double-precision reference; the bf16 model with
#                                  flash and with Gemm attention vs the CPU model; stories260K if DATA
#                                  holds stories260K-hf)
#   2. bench_llama_cuda           (TinyLlama shape, bf16: --attention gemm, then flash, at 2 x 512 and
#                                  8 x 512 — the ratio is measured within this one run)
#   3. hdpissa_cuda_train_tests   (hdpissa-train --device cuda vs the CPU trainer; needs DATA)
# With PROFILE=1 (and nsys on the machine) also the per-kernel GPU time of the flash 2 x 512 bench;
# with BACKEND=1 also the CudaBackend suite (hdpissa_cuda_tests).
# Logs go to $OUT (else build/gpu/out).
# Usage: [DATA=.devdata] [SKIP_TRAIN=1] [PROFILE=1] scripts/gpu-attention-check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${OUT:-build/gpu/out}
DATA=${DATA:-.devdata}
mkdir -p "$OUTDIR"
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/device-env.sh"  # PCRE2 on a GPU image without it
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee "$OUTDIR/device.txt"
t0=$(date +%s)
targets=(hdpissa_llama_cuda_tests bench_llama_cuda)
[[ -z "${SKIP_TRAIN:-}" ]] && targets+=(hdpissa_cuda_train_tests)
[[ -n "${BACKEND:-}" ]] && targets+=(hdpissa_cuda_tests)
{ cmake --preset gpu -DHDPISSA_BUILD_TESTS=ON -DHDPISSA_BUILD_EXAMPLES=ON -DHDPISSA_BUILD_BENCH=ON &&
  cmake --build build/gpu -j"${JOBS:-16}" --target "${targets[@]}"; } > "$OUTDIR/build.log" 2>&1 ||
  { echo "build failed"; grep -E "error" "$OUTDIR/build.log" | head -20; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
rc=0
run() {  # name, timeout, command...
  local name=$1 lim=$2; shift 2
  local s=$(date +%s)
  timeout "$lim" "$@" > "$OUTDIR/$name.log" 2>&1
  local r=$?
  echo "$name: rc $r, $(( $(date +%s) - s )) s"
  [[ $r -ne 0 ]] && rc=1
  return 0
}
HDPISSA_DATA="$DATA" run llama-cuda-tests 240 build/gpu/tests/llama/cuda/hdpissa_llama_cuda_tests --no-intro
grep -E "^\[doctest\] (test cases|assertions)|flash hd|hd64 bf16" "$OUTDIR/llama-cuda-tests.log"
grep -B2 -A12 "ERROR" "$OUTDIR/llama-cuda-tests.log" | head -60
B=build/gpu/bench/micro/bench_llama_cuda
for mb in 2 8; do
  steps=20; [[ $mb == 8 ]] && steps=10
  for att in gemm flash; do
    run "bench-$att-${mb}x512" 180 $B --attention "$att" --batch "$mb" --seq 512 --steps "$steps"
    grep -E "^attention|^forward\+backward|^eval forward|^GPU memory|^achieved [0-9]|attention (fwd|bwd)|^  (linears|attention)" \
      "$OUTDIR/bench-$att-${mb}x512.log"
  done
done
if [[ -n "${PROFILE:-}" ]] && command -v nsys > /dev/null; then  # per-kernel GPU time, flash 2 x 512
  run nsys-flash-2x512 180 nsys profile -o "$OUTDIR/prof" --force-overwrite true --stats=false $B --attention flash --steps 5 --warmup 2
  nsys stats --report cuda_gpu_kern_sum --format csv "$OUTDIR/prof.nsys-rep" > "$OUTDIR/kern-sum.csv" 2>/dev/null
  rm -f "$OUTDIR/prof.nsys-rep" "$OUTDIR/prof.sqlite"
  head -25 "$OUTDIR/kern-sum.csv" | cut -c1-220
fi
if [[ -z "${SKIP_TRAIN:-}" ]]; then
  HDPISSA_GPU_TEST_DATA="$DATA" HDPISSA_GPU_TEST_SCRATCH="$OUTDIR/scratch" \
    run cuda-train-tests 300 build/gpu/tests/llama/cuda_train/hdpissa_cuda_train_tests --no-intro
  grep -E "^\[doctest\] (test cases|assertions)" "$OUTDIR/cuda-train-tests.log"
  grep -B2 -A12 "ERROR" "$OUTDIR/cuda-train-tests.log" | head -40
fi
if [[ -n "${BACKEND:-}" ]]; then
  run cuda-tests 240 build/gpu/tests/cuda/hdpissa_cuda_tests --no-intro
  grep -E "^\[doctest\] (test cases|assertions)" "$OUTDIR/cuda-tests.log"
  grep -B2 -A12 "ERROR" "$OUTDIR/cuda-tests.log" | head -40
fi
echo "total: $(( $(date +%s) - t0 )) s, rc $rc"
exit $rc
