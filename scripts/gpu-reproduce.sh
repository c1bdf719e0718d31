#!/usr/bin/env bash
# The reproduction driver (scripts/reproduce.sh, issue 6) on a GPU machine, in one call: builds
# hdpissa-train with CUDA and hdpissa-rank-analysis (and, unless SKIP_TESTS=1, the GPU trainer tests,
# run beside it), runs `DEVICE=cuda SHAPE=large scripts/reproduce.sh`, and copies the small outputs
# (logs, metrics, rank CSV/JSON, summary; not the checkpoints) to KEEP as runs finish, so that a run
# cut short still returns every finished configuration.
#
#   DATA=.devdata/repro KEEP=$OUT scripts/gpu-reproduce.sh       # what docs/results.md ran on an H200
#
# Time on one H200 (16 cores): build 215 s, the 13 trainings ≈ 6 min (6 at a time), the analyses
# 1–2 min: ≈ 12 min in all, more than one 600-s device call (docs/results.md says how it was split).
#
# Environment: DATA (folder with gsm8k/{train,test}.jsonl, llama2_tokenizer/tokenizer.model and, for
# the tests, stories260K-hf/; default ../shared/data), KEEP (default runs/gpu-reproduce), WORK (the
# full outputs, checkpoints included; default runs/reproduce-gpu), BUILD (build-rank-cuda), JOBS
# (training runs side by side on the GPU, default 6), SKIP_TESTS; every other reproduce.sh variable
# (STEPS, RANK, GLOBAL, ...) passes through.
set -uo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/device-env.sh"  # PCRE2 on a GPU image without it
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DATA=$(cd "${DATA:-$ROOT/../shared/data}" && pwd)
KEEP=${KEEP:-$ROOT/runs/gpu-reproduce}
WORK=${WORK:-$ROOT/runs/reproduce-gpu}
BUILD=${BUILD:-$ROOT/build-rank-cuda}
export JOBS=${JOBS:-6}
mkdir -p "$KEEP" "$WORK"
[[ -d /usr/local/cuda/bin ]] && export PATH="/usr/local/cuda/bin:$PATH"
PY=${PY:-$(command -v python3)}
export PY

keep() {  # everything under WORK except checkpoints
  tar -C "$WORK" --exclude='./*/model' --exclude='./model-random-*' -cf - . 2>/dev/null | tar -C "$KEEP" -xf - 2>/dev/null
}

T0=$SECONDS
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$KEEP/device.txt"
targets=(hdpissa-train hdpissa-rank-analysis)
[[ -z "${SKIP_TESTS:-}" ]] && targets+=(hdpissa_cuda_train_tests)
{ [[ -f $BUILD/CMakeCache.txt ]] || cmake -S "$ROOT" -B "$BUILD" -DHDPISSA_CUDA=ON -DHDPISSA_MPI=OFF \
    -DHDPISSA_BUILD_TESTS=ON -DHDPISSA_BUILD_EXAMPLES=ON -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a; } \
  > "$KEEP/configure.log" 2>&1 &&
  cmake --build "$BUILD" --target "${targets[@]}" -j"$(nproc)" > "$KEEP/build.log" 2>&1 ||
  { echo "gpu-reproduce: build failed"; tail -30 "$KEEP/build.log"; exit 1; }
echo "gpu-reproduce: built in $((SECONDS - T0)) s"

tests_pid=
if [[ -z "${SKIP_TESTS:-}" ]]; then
  HDPISSA_GPU_TEST_DATA="$DATA" HDPISSA_GPU_TEST_SCRATCH="$WORK/test-scratch" \
    "$BUILD/tests/llama/cuda_train/hdpissa_cuda_train_tests" --no-intro > "$KEEP/cuda-train-tests.log" 2>&1 &
  tests_pid=$!
fi

(while sleep 20; do keep; done) &
keeper=$!
HDPISSA_DATA="$DATA" DEVICE=cuda SHAPE=large OUT="$WORK" BUILD="$BUILD" SKIP_BUILD=1 \
  "$ROOT/scripts/reproduce.sh" 2>&1 | tee "$WORK/reproduce.log"
rc=${PIPESTATUS[0]}
kill "$keeper" 2>/dev/null
if [[ -n $tests_pid ]]; then
  wait "$tests_pid"
  echo "gpu-reproduce: GPU trainer tests exit $? ($(grep -E 'test cases|assertions' "$KEEP/cuda-train-tests.log" | tr -s ' ' | tr '\n' ' '))"
fi
keep
echo "gpu-reproduce: finished in $((SECONDS - T0)) s (reproduce.sh exit $rc); small outputs in $KEEP"
exit "$rc"
