#!/usr/bin/env bash
# gpu-decode-check.sh — the GPU decoder's tests in one device call (docs/evaluation.md, "GPU decoding"):
# builds (unless PREBUILT=1) and runs
#   hdpissa_llama_decode_cuda_tests   GPU greedy tokens vs the CPU decoder (fp32 equal; bf16 rule)
#   hdpissa_cuda_train_tests          -tc "*batched GPU generation*": the CUDA engine's generation vs
#                                     CPU greedy decoding of its merged weights (hdpissa, lora)
# and a smoke run of hdpissa-generate / hdpissa-eval --device cuda on stories260K.
#   DATA [.devdata if it holds stories260K-hf, else $HDPISSA_DATA or ../shared/data]  JOBS [16]  OUT [build/gpu/decode-check]
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [[ -z "${DATA:-}" ]]; then
  if [[ -f .devdata/stories260K-hf/model.safetensors ]]; then DATA="$ROOT/.devdata"; else DATA="${HDPISSA_DATA:-$ROOT/../shared/data}"; fi
fi
OUT="${OUT:-build/gpu/decode-check}"
mkdir -p "$OUT"
source scripts/device-env.sh
if [[ "${PREBUILT:-0}" != 1 ]]; then
  cmake --preset gpu -DHDPISSA_MPI=OFF >"$OUT/configure.log" 2>&1 \
    && cmake --build build/gpu -j"${JOBS:-16}" --target hdpissa_llama_decode_cuda_tests hdpissa_cuda_train_tests \
         hdpissa-generate hdpissa-eval >"$OUT/build.log" 2>&1 \
    || { echo "gpu-decode-check: build FAILED"; grep -E "error" "$OUT/build.log" "$OUT/configure.log" | head -20; exit 1; }
fi
rc=0
HDPISSA_DATA="$DATA" build/gpu/tests/llama/cuda/hdpissa_llama_decode_cuda_tests --no-intro 2>&1 | tee "$OUT/decode-tests.log" | tail -40
[[ ${PIPESTATUS[0]} == 0 ]] || rc=1
HDPISSA_DATA="$DATA" HDPISSA_GPU_TEST_SCRATCH="$OUT/scratch" build/gpu/tests/llama/cuda_train/hdpissa_cuda_train_tests --no-intro \
  -tc="*batched GPU generation*" 2>&1 | tee "$OUT/engine-generate.log" | tail -20
[[ ${PIPESTATUS[0]} == 0 ]] || rc=1
B=build/gpu/examples/llama
printf '"Once upon a time"\n{"prompt": "Lily went to", "id": "lily"}\n{"ids": [1, 400, 300]}\n' >"$OUT/prompts.jsonl"
for dt in fp32 bf16; do
  $B/hdpissa-generate --device cuda --dtype $dt --model "$DATA/stories260K-hf" --tokenizer "$DATA/stories260K-hf/tokenizer.model" \
    --input "$OUT/prompts.jsonl" --max-new-tokens 40 --batch-size 2 || rc=1
done
$B/hdpissa-generate --model "$DATA/stories260K-hf" --tokenizer "$DATA/stories260K-hf/tokenizer.model" \
  --input "$OUT/prompts.jsonl" --max-new-tokens 40 || rc=1   # the CPU's, for the eye
if [[ -f "$DATA/gsm8k/test.jsonl" ]]; then
  $B/hdpissa-eval --task gsm8k --device cuda --dtype fp32 --model "$DATA/stories260K-hf" --data "$DATA/gsm8k/test.jsonl" \
    --limit 64 --max-new-tokens 64 --batch-size 16 --output "$OUT/eval-gpu" || rc=1
  $B/hdpissa-eval --task gsm8k --model "$DATA/stories260K-hf" --data "$DATA/gsm8k/test.jsonl" \
    --limit 64 --max-new-tokens 64 --output "$OUT/eval-cpu" >/dev/null 2>&1 || rc=1
  python3 - "$OUT/eval-gpu/gsm8k.jsonl" "$OUT/eval-cpu/gsm8k.jsonl" <<'PY' || rc=1
import json, sys
g = [json.loads(l)["completion"] for l in open(sys.argv[1])]
c = [json.loads(l)["completion"] for l in open(sys.argv[2])]
same = sum(a == b for a, b in zip(g, c))
print(f"gsm8k completions, GPU fp32 vs CPU: {same}/{len(c)} identical")
sys.exit(0 if same == len(c) == 64 else 1)
PY
fi
echo "gpu-decode-check: $([[ $rc == 0 ]] && echo PASS || echo FAIL)"
exit $rc
