#!/usr/bin/env bash
# gpu-model-families-check.sh — Qwen2 (q/k/v biases) and sliding-window attention (Mistral) on the
# GPU machine, where torch + transformers exist:
#   1. tests/reference/make_model_fixtures.py  tiny seeded Qwen2 / Mistral checkpoints + transformers'
#                                               logits, loss, gradients → tests/llama/fixtures/models
#   2. hdpissa_llama_tests "model families*"   the CPU model vs those fixtures, a naive double model,
#                                               finite differences, the KV cache, checkpoint round trip
#   3. hdpissa_llama_cuda_tests                 the GPU model suite (incl. "model families:" GPU vs CPU,
#                                               fp32 / bf16, flash and gemm attention)
# Commit tests/llama/fixtures/models/ afterwards (CMake then registers llama_model_families_transformers).
# Env: BUILD_DIR [build/gpu] JOBS [16] OUT [BUILD_DIR/out]. Last line: gpu-model-families-check: PASS|FAIL.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source "$ROOT/scripts/device-env.sh"
B="${BUILD_DIR:-$ROOT/build/gpu}"
OUTDIR="${OUT:-$B/out}"
mkdir -p "$OUTDIR"
fail=0
if python3 tests/reference/make_model_fixtures.py > "$OUTDIR/fixtures.log" 2>&1; then
  echo "fixtures: $(tr '\n' ' ' < "$OUTDIR/fixtures.log")"
else
  echo "gpu-model-families-check: FAIL fixture generation"; tail -5 "$OUTDIR/fixtures.log"; fail=1
fi
{ cmake --preset gpu -DHDPISSA_BUILD_TESTS=ON -DHDPISSA_BUILD_EXAMPLES=ON &&
  cmake --build "$B" -j"${JOBS:-16}" --target hdpissa_llama_tests hdpissa_llama_cuda_tests; } > "$OUTDIR/families-build.log" 2>&1 ||
  { echo "gpu-model-families-check: FAIL build"; grep -E "error" "$OUTDIR/families-build.log" | head -20
    echo "gpu-model-families-check: FAIL"; exit 1; }
run() {  # NAME COMMAND...
  local n=$1; shift
  if timeout 900 "$@" > "$OUTDIR/$n.log" 2>&1; then echo "$n: ok ($(grep -E '^\[doctest\] (test cases|assertions)' "$OUTDIR/$n.log" | tr '\n' ' '))"
  else echo "$n: FAILED"; grep -E "ERROR|FAILED|error" "$OUTDIR/$n.log" | head -20; fail=1; fi
  grep -E "MESSAGE|skipped" "$OUTDIR/$n.log" | head -5
}
run families-cpu "$B/tests/llama/hdpissa_llama_tests" --no-intro "--test-case=model families*,checkpoint: unused*"
grep -q "transformers fixtures" "$OUTDIR/families-cpu.log" && grep -q "skipped:" "$OUTDIR/families-cpu.log" && {
  echo "families-cpu: the transformers comparison was skipped"; fail=1; }
HDPISSA_DATA="${DATA:-${HDPISSA_DATA:-$ROOT/.devdata}}" run llama-cuda-tests "$B/tests/llama/cuda/hdpissa_llama_cuda_tests" --no-intro
grep -E "model families|tiny fp32 (qwen2|window)|bias" "$OUTDIR/llama-cuda-tests.log" | head -20
[[ $fail == 0 ]] && echo "gpu-model-families-check: PASS" || echo "gpu-model-families-check: FAIL"
exit $fail
