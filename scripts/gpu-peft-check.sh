#!/usr/bin/env bash
# gpu-peft-check.sh — our PEFT adapters load in PEFT and compute our merged model's loss
# (tests/reference/peft_adapter_check.py; the commands of docs/trainer.md, "Outputs", as a script).
# Runs where torch + transformers + peft exist (the GPU machine); the training itself is on the CPU.
#   lora                 runs/peft-lora/adapter on the original base
#   pissa (converted)    the rank-2r conversion on the original base
#   pissa (itself)       the rank-r adapter on its residual model
#   hdpissa (export)     ΔW as a full-rank truncated LoRA (--export-lora-rank 172 = full rank)
# Env: BUILD_DIR [build/gpu] DATA [.devdata, else $HDPISSA_DATA] WORK [/tmp/hdpissa-peft-check]
#      RECORD: append each check's {label, loss_ours, loss_peft, n_tokens, peft} to this JSONL — the
#      fixture tests/llama/fixtures/peft/peft_losses.jsonl that CI's llama_peft_fixture test replays on
#      the CPU (scripts/peft-fixture-check.sh: the same runs, our merged loss vs PEFT's recorded loss).
# Exit 0 when every check passed. Last line: gpu-peft-check: PASS|FAIL.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/device-env.sh"
G="${BUILD_DIR:-$ROOT/build/gpu}/examples/llama"
D="${DATA:-${HDPISSA_DATA:-$ROOT/.devdata}}"
W="${WORK:-/tmp/hdpissa-peft-check}"
T="$D/stories260K-hf/tokenizer.model"
rm -rf "$W"; mkdir -p "$W"
fail=0
train() {  # NAME ARGS...
  local n=$1; shift
  "$G/hdpissa-train" --model "$D/stories260K-hf" --data "$D/gsm8k/train.jsonl" --rank 4 --lr 2e-3 --max-len 256 \
    --max-steps 20 --threads 1 --output "$W/$n" "$@" > "$W/$n.log" 2>&1 || { echo "gpu-peft-check: FAIL train $n (see $W/$n.log)"; tail -5 "$W/$n.log"; fail=1; }
}
check() {  # LABEL MERGED BASE ADAPTER
  "$G/hdpissa-eval" --model "$2" --tokenizer "$T" --data "$D/gsm8k/test.jsonl" --max-len 256 --eval-examples 32 \
     --micro-batch 4 --threads 1 --json "$2/eval.json" > "$W/$1-eval.log" 2>&1 || { echo "gpu-peft-check: FAIL eval $1"; tail -5 "$W/$1-eval.log"; fail=1; return; }
  if python3 "$ROOT/tests/reference/peft_adapter_check.py" --base "$3" --adapter "$4" --eval-json "$2/eval.json" \
       ${RECORD:+--record "$RECORD" --label "$1"} > "$W/$1-peft.log" 2>&1; then
    echo "gpu-peft-check: PASS $1: $(tail -2 "$W/$1-peft.log" | head -1)"
  else echo "gpu-peft-check: FAIL $1: $(tail -3 "$W/$1-peft.log")"; fail=1; fi
}
train peft-lora --method lora --alpha 8
train peft-pissa --method pissa --alpha 8
train peft-hd --method hdpissa --groups-per-process 4 --export-lora-rank 172
check lora "$W/peft-lora" "$D/stories260K-hf" "$W/peft-lora/adapter"
check pissa-converted "$W/peft-pissa" "$D/stories260K-hf" "$W/peft-pissa/adapter"
check pissa-residual "$W/peft-pissa" "$W/peft-pissa/adapter/pissa/residual_model" "$W/peft-pissa/adapter/pissa"
check hdpissa-export "$W/peft-hd" "$D/stories260K-hf" "$W/peft-hd/adapter"
[[ $fail == 0 ]] && echo "gpu-peft-check: PASS" || echo "gpu-peft-check: FAIL"
exit $fail
