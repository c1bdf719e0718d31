#!/usr/bin/env bash
# gpu-peft-check.sh — our PEFT adapters load in PEFT and compute our merged model's loss
# (tests/reference/peft_adapter_check.py; the commands of docs/trainer.md, "Outputs", as a script).
# Runs where torch + transformers + peft exist (the GPU machine); the training itself is on the CPU.
#   lora                 runs/peft-lora/adapter on the original base
#   pissa (converted)    the rank-2r conversion on the original base
#   pissa (itself)       the rank-r adapter on its residual model
#   hdpissa (export)     ΔW as a full-rank truncated LoRA (--export-lora-rank 172 = full rank)
#   truncated exports    rank 4 (hdpissa), energy 0.9 (lora-dwu), rank 6 trained on the GPU: PEFT's
#                        merge equals torch's float64 rank-R SVD of W_final - W_base
#   bf16-output          a GPU bf16 run with --output-dtype bf16: BF16 tensors, loads in transformers
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
# Truncated exports (R < full rank), checked against torch's float64 SVD of W_final - W_base through
# PEFT's merge (tests/reference/truncated_export_check.py); one trained on the GPU when there is one.
tcheck() {  # LABEL RUN
  if python3 "$ROOT/tests/reference/truncated_export_check.py" --base "$D/stories260K-hf" --final "$W/$2" \
       --adapter "$W/$2/adapter" --out "$W/$1-trunc.json" > "$W/$1-trunc.log" 2>&1; then
    echo "gpu-peft-check: PASS $1: $(grep 'layers, ranks' "$W/$1-trunc.log")"
  else echo "gpu-peft-check: FAIL $1: $(tail -4 "$W/$1-trunc.log")"; fail=1; fi
}
train peft-hd-r4 --method hdpissa --groups-per-process 4 --export-lora-rank 4
tcheck hdpissa-rank4 peft-hd-r4
train peft-dwu-e90 --method lora-dwu --export-lora-energy 0.9
tcheck lora-dwu-energy0.9 peft-dwu-e90
if [[ -z "${NO_GPU:-}" ]] && nvidia-smi -L > /dev/null 2>&1; then
  train peft-hd-gpu --device cuda --dtype fp32 --method hdpissa --groups-per-process 4 --export-lora-rank 6
  tcheck hdpissa-gpu-rank6 peft-hd-gpu
  # bf16 training, merged output in bf16 (--output-dtype): transformers loads it (fp32 compute) and
  # computes our loss on it (hf-check.sh with CKPT), and the file's tensors are BF16.
  train peft-bf16 --device cuda --dtype bf16 --method hdpissa --groups-per-process 4 --output-dtype bf16
  if python3 -c "import json,struct,sys; f=open(sys.argv[1],'rb'); n=struct.unpack('<Q',f.read(8))[0]; h=json.loads(f.read(n)); d={v['dtype'] for k,v in h.items() if k!='__metadata__'}; print(d); sys.exit(d!={'BF16'})" "$W/peft-bf16/model.safetensors" > "$W/bf16-dtype.log" 2>&1 &&
     BUILD_DIR="${BUILD_DIR:-$ROOT/build/gpu}" DATA="$D" CKPT="$W/peft-bf16" WORK="$W/hf-bf16" bash "$ROOT/scripts/hf-check.sh" > "$W/bf16-hf.log" 2>&1; then
    echo "gpu-peft-check: PASS bf16-output: dtypes $(cat "$W/bf16-dtype.log"), $(grep -i 'rel' "$W/bf16-hf.log" | tail -1)"
  else echo "gpu-peft-check: FAIL bf16-output: $(cat "$W/bf16-dtype.log"; tail -4 "$W/bf16-hf.log")"; fail=1; fi
fi
[[ $fail == 0 ]] && echo "gpu-peft-check: PASS" || echo "gpu-peft-check: FAIL"
exit $fail
