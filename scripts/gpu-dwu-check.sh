#!/usr/bin/env bash
# gpu-dwu-check.sh — the Direct Weight Update GEMM on one GPU machine, in one go: builds (preset gpu,
# sm_90a) the CUDA test suite, the trainer's GPU suite and the DWU benchmarks, then runs
#   1. hdpissa_cuda_tests                 (every CudaBackend test, incl. the sm_90a kernel's)
#   2. bench_dwu_gemm                     (kernel configurations vs cuBLAS: accuracy + 7B shapes)
#   3. bench_cuda_e2e dwu7b               (the whole DWU step of a 7B-shaped model vs its floor)
#   4. hdpissa_cuda_train_tests           (hdpissa-train --device cuda vs the CPU trainer; needs DATA)
# Logs go to $OUT (else build/gpu/out). Usage: [DATA=.devdata] [SKIP_TRAIN=1] scripts/gpu-dwu-check.sh
set -uo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/device-env.sh"  # PCRE2 on a GPU image without it
cd "$(dirname "$0")/.."
OUTDIR=${OUT:-build/gpu/out}
DATA=${DATA:-.devdata}
mkdir -p "$OUTDIR"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee "$OUTDIR/device.txt"
t0=$(date +%s)
targets=(hdpissa_cuda_tests bench_dwu_gemm bench_cuda_e2e)
[[ -z "${SKIP_TRAIN:-}" ]] && targets+=(hdpissa_cuda_train_tests)
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
run cuda-tests 240 build/gpu/tests/cuda/hdpissa_cuda_tests --no-intro
grep -E "^\[doctest\] (test cases|assertions)" "$OUTDIR/cuda-tests.log"
grep -B2 -A12 "ERROR" "$OUTDIR/cuda-tests.log" | head -60
run dwu-gemm 120 build/gpu/bench/micro/bench_dwu_gemm --reps 10
grep -E "failure|^7B total|^  (cublas|3xtf32 wg2 n128 s2|tf32 wg2 n128 s3)|ceilings" "$OUTDIR/dwu-gemm.log"
run e2e-dwu7b 300 build/gpu/bench/micro/bench_cuda_e2e dwu7b
grep -E "^dwu7b" "$OUTDIR/e2e-dwu7b.log"
if [[ -z "${SKIP_TRAIN:-}" ]]; then
  HDPISSA_GPU_TEST_DATA="$DATA" HDPISSA_GPU_TEST_SCRATCH="$OUTDIR/scratch" \
    run cuda-train-tests 300 build/gpu/tests/llama/cuda_train/hdpissa_cuda_train_tests --no-intro
  grep -E "^\[doctest\] (test cases|assertions)" "$OUTDIR/cuda-train-tests.log"
  grep -B2 -A12 "ERROR" "$OUTDIR/cuda-train-tests.log" | head -40
fi
echo "total: $(( $(date +%s) - t0 )) s, rc $rc"
exit $rc
