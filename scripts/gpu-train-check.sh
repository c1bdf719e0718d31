#!/usr/bin/env bash
# hdpissa-train's GPU path on a GPU machine: the GPU test suite (tests/llama/cuda_train, fp32 vs the
# CPU trainer, bf16, resume) and a short TinyLlama-shaped bf16 throughput smoke run per method.
# Usage (repository root): BIN=build/gpu scripts/gpu-train-check.sh
#   BIN      build directory holding hdpissa-train and hdpissa_cuda_train_tests (built if absent:
#            cmake --preset gpu + the two targets)
#   DATA     folder with stories260K-hf/ and gsm8k/{train,test}.jsonl (default ../shared/data)
#   TPUT     folder with train.jsonl + tokenizer.model (LLaMA-2 vocabulary) for the throughput smoke
#            run (skipped when absent); TL_LAYERS layers of TinyLlama's shape (default 4), random init
#   OUT      logs and metrics (default runs/gpu-train-check)
set -uo pipefail
BIN=${BIN:-build/gpu}
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/gpu-train-check}
TL_LAYERS=${TL_LAYERS:-4}
mkdir -p "$OUT"
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/device-env.sh"  # PCRE2 on a GPU image without it
if ! [ -x "$BIN/examples/llama/hdpissa-train" ] || ! [ -x "$BIN/tests/llama/cuda_train/hdpissa_cuda_train_tests" ] ||
   ldd "$BIN/examples/llama/hdpissa-train" "$BIN/tests/llama/cuda_train/hdpissa_cuda_train_tests" | grep -q "not found"; then
  echo "gpu-train-check: building in build/gpu"
  BIN=build/gpu
  cmake --preset gpu > "$OUT/configure.log" 2>&1 &&
    cmake --build build/gpu --target hdpissa-train hdpissa_cuda_train_tests -j"${JOBS:-16}" > "$OUT/build.log" 2>&1 ||
    { tail -30 "$OUT/build.log"; exit 1; }
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/device.txt"
rc=0
HDPISSA_GPU_TEST_DATA="$DATA" HDPISSA_GPU_TEST_SCRATCH="$OUT/scratch" \
  "$BIN/tests/llama/cuda_train/hdpissa_cuda_train_tests" --no-intro 2>&1 | tee "$OUT/tests.log" |
  grep -E "shared init|fresh GPU|bf16|resume|test cases|assertions|ERROR|error" | head -150
[ "${PIPESTATUS[0]}" = 0 ] || { rc=1; echo "--- tests.log tail"; tail -40 "$OUT/tests.log"; }
TPUT=${TPUT:-}
if [ -n "$TPUT" ] && [ -f "$TPUT/train.jsonl" ]; then
  M=/tmp/tinyllama-$TL_LAYERS
  [ -d "$M" ] || python3 scripts/make-random-llama.py --preset tinyllama --layers "$TL_LAYERS" --dtype bf16 \
                  --tokenizer "$TPUT/tokenizer.model" --out "$M" > "$OUT/make-model.log" 2>&1 || { cat "$OUT/make-model.log"; rc=1; }
  for run in "hdpissa 1" "hdpissa 8" "lora 1" "pissa 1" "full 1"; do
    set -- $run
    echo "== $1 K=$2 (TinyLlama shape, $TL_LAYERS layers, random init, bf16, micro-batch 2 x 512, grad-accum 8, r 16)"
    "$BIN/examples/llama/hdpissa-train" --device cuda --dtype bf16 \
      --method "$1" --groups-per-process "$2" --model "$M" --data "$TPUT/train.jsonl" --micro-batch 2 --max-len 512 \
      --grad-accum 8 --rank 16 --lr 1e-4 --max-steps 4 $([[ $1 == *pissa* ]] && echo --svd randomized) --metrics "$OUT/tput-$1-k$2.jsonl" \
      2>&1 | tee "$OUT/tput-$1-k$2.log" | grep -E "step |trained|error" || rc=1
  done
fi
exit $rc
