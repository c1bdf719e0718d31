#!/usr/bin/env bash
# hdpissa-train --device cuda under mpirun (one process per GPU, NCCL) on a GPU machine: builds only
# hdpissa-train (CUDA + MPI + NCCL) and tests/llama/cuda_train/hdpissa_cuda_train_mp_tests, runs
# its three checks one by one and prints a PASS / FAIL / SKIP summary (docs/trainer.md, "Several GPUs"):
#   np1      mpirun -np 1 --comm mpi (NCCL) x 2 groups == one process x 2 groups, bit for bit
#            (step + eval losses, model.safetensors bytes; hdpissa fp32, lora fp32, hdpissa bf16)
#   1gpu-err mpirun -np 2 with one GPU visible: "expected at most one process per GPU …" error
#   2gpu     mpirun -np 2 x 1 group vs one process x 2 groups (SKIP with fewer than 2 GPUs)
# Usage (repository root): DATA=.devdata/repro scripts/gpu-mp-check.sh
#   DATA  folder with stories260K-hf/ and gsm8k/{train,test}.jsonl (default ../shared/data)
#   BIN   build directory (default build/gpu; configured with the gpu preset + tests if absent)
#   OUT   logs (default runs/gpu-mp-check); per-run logs under $OUT/scratch/mp/*/log.txt
#   JOBS  build parallelism (default: all cores)
# Exit status 0 when nothing failed (SKIP is not a failure). Last line: gpu-mp-check: PASS|FAIL|SKIP ….
set -uo pipefail
BIN=${BIN:-build/gpu}
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/gpu-mp-check}
JOBS=${JOBS:-$(nproc)}
[ -d /usr/local/cuda/bin ] && export PATH=/usr/local/cuda/bin:$PATH
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 \
       OMPI_MCA_btl_vader_single_copy_mechanism=none NCCL_NVLS_ENABLE=0
mkdir -p "$OUT"
t0=$SECONDS
declare -a SUMMARY
fail=0

if ! [ -f "$BIN/CMakeCache.txt" ]; then
  echo "gpu-mp-check: configuring $BIN"
  cmake -S . -B "$BIN" -DCMAKE_BUILD_TYPE=Release -DHDPISSA_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a \
        -DHDPISSA_BUILD_TESTS=ON -DHDPISSA_BUILD_EXAMPLES=ON > "$OUT/configure.log" 2>&1 ||
    { tail -30 "$OUT/configure.log"; echo "gpu-mp-check: FAIL (configure, $OUT/configure.log)"; exit 1; }
fi
echo "gpu-mp-check: building hdpissa-train + hdpissa_cuda_train_mp_tests in $BIN (-j$JOBS)"
if ! cmake --build "$BIN" --target hdpissa-train hdpissa_cuda_train_mp_tests -j"$JOBS" > "$OUT/build.log" 2>&1; then
  tail -30 "$OUT/build.log"
  grep -q "No rule to make target.*hdpissa_cuda_train_mp_tests" "$OUT/build.log" &&
    echo "gpu-mp-check: the build has no hdpissa_cuda_train_mp_tests: NCCL, MPI or mpiexec not found at configure time"
  echo "gpu-mp-check: FAIL (build, $OUT/build.log)"
  exit 1
fi
echo "gpu-mp-check: built in $((SECONDS - t0)) s"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | tee "$OUT/device.txt"

T=$BIN/tests/llama/cuda_train/hdpissa_cuda_train_mp_tests
ran=0  # checks that ran and passed
check() {  # name, then the test binary's arguments
  local name=$1
  shift
  local s=$SECONDS
  HDPISSA_GPU_TEST_DATA="$DATA" HDPISSA_GPU_TEST_SCRATCH="$OUT/scratch" "$T" --no-intro "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local verdict
  case $rc in
    0) verdict=PASS; ran=$((ran + 1)) ;;
    77) verdict="SKIP ($(grep -m1 SKIP "$OUT/$name.log"))" ;;
    *) verdict="FAIL (rc $rc, $OUT/$name.log)"; fail=1 ;;
  esac
  grep -E "MESSAGE|bit-identical|DIFFER|NOT bit|ERROR|error:" "$OUT/$name.log" | grep -v "^  \\$" | head -20
  [ $rc -ne 0 ] && [ $rc -ne 77 ] && tail -40 "$OUT/$name.log"
  SUMMARY+=("$(printf '%-9s %s  [%ss]' "$name" "$verdict" $((SECONDS - s)))")
}
check np1 "--test-case=np 1*"
check 1gpu-err "--test-case=one GPU*"
check 2gpu --require-gpus 2 "--test-case=2 GPUs*"

echo "== gpu-mp-check summary ($((SECONDS - t0)) s in all)"
printf '%s\n' "${SUMMARY[@]}"
if [ $fail != 0 ]; then echo "gpu-mp-check: FAIL"
elif [ $ran = 0 ]; then echo "gpu-mp-check: SKIP (no check ran: no GPU?)"
else echo "gpu-mp-check: PASS ($ran of 3 checks ran and passed, none failed)"; fi
exit $fail
