#!/usr/bin/env bash
# hf-check.sh — our saved HF checkpoint loads in transformers, and the loss transformers computes on
# it matches ours (tests/reference/hf_load_check.py, fp32, |rel diff| <= 1e-4).
#
# For each device in DEVICES (default "cpu cuda"):
#   1. hdpissa-train fine-tunes stories260K (HD-PiSSA, K = 4 virtual groups, r = 4, 30 steps,
#      max-len 256; `--device cuda --dtype fp32` for cuda) and writes the merged checkpoint;
#   2. hdpissa-eval computes our held-out loss on the first 32 GSM8K-test examples (right-padded
#      batches of 4) and writes those exact batches as JSON;
#   3. hf_load_check.py loads the checkpoint with AutoModelForCausalLM (fp32) and recomputes the loss.
# A device is skipped (with a message) when the trainer cannot run on it (no GPU, or a trainer
# without --device). CKPT=DIR checks an existing checkpoint instead of training one.
#
# Env: BUILD_DIR (binaries in BIN=$BUILD_DIR/examples/llama; default build/gpu), HF_JSON_DIR (result
#      JSON per check; default WORK=/tmp/hdpissa-hf-check), DATA (folder with stories260K-hf/ and gsm8k/{train,test}.jsonl; default
#      .devdata/hfcheck if present, else $HDPISSA_DATA, else ../shared/data), PYTHON (python3).
# Exit: 0 every check that ran passed, 1 a check failed, 77 none could run.
set -uo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/device-env.sh"  # PCRE2 on a GPU image without it
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build/gpu}"
BIN="${BIN:-$BUILD_DIR/examples/llama}"
PY="${PYTHON:-python3}"
if [[ -z "${DATA:-}" ]]; then
  if [[ -d "$ROOT/.devdata/hfcheck" ]]; then DATA="$ROOT/.devdata/hfcheck"; else DATA="${HDPISSA_DATA:-$ROOT/../shared/data}"; fi
fi
WORK="${WORK:-/tmp/hdpissa-hf-check}"
JSON_DIR="${HF_JSON_DIR:-$WORK}"
mkdir -p "$JSON_DIR" "$WORK"
for f in stories260K-hf/model.safetensors stories260K-hf/tokenizer.model gsm8k/train.jsonl gsm8k/test.jsonl; do
  [[ -f "$DATA/$f" ]] || { echo "hf-check: SKIP: expected $DATA/$f, not found (set DATA)"; exit 77; }
done
[[ -x "$BIN/hdpissa-eval" ]] || { echo "hf-check: SKIP: no hdpissa-eval in $BIN (set BUILD_DIR)"; exit 77; }
tok="$DATA/stories260K-hf/tokenizer.model"
ran=0 failed=0
check() {  # check NAME CHECKPOINT_DIR
  local name="$1" ckpt="$2"
  "$BIN/hdpissa-eval" --model "$ckpt" --tokenizer "$tok" --data "$DATA/gsm8k/test.jsonl" --max-len 256 \
    --eval-examples 32 --micro-batch 4 --threads 1 --json "$WORK/eval-$name.json" || { failed=1; return; }
  "$PY" "$ROOT/tests/reference/hf_load_check.py" --model "$ckpt" --eval-json "$WORK/eval-$name.json" \
    --backend transformers --out "$JSON_DIR/hf-check-$name.json"
  local rc=$?
  if [[ $rc -eq 77 ]]; then echo "hf-check $name: SKIP (transformers unavailable)"; return; fi
  ran=1
  [[ $rc -ne 0 ]] && failed=1
  echo "hf-check $name: $([[ $rc -eq 0 ]] && echo PASS || echo FAIL)"
}

if [[ -n "${CKPT:-}" ]]; then
  check given "$CKPT"
else
  for dev in ${DEVICES:-cpu cuda}; do
    [[ -x "$BIN/hdpissa-train" ]] || { echo "hf-check $dev: SKIP: no hdpissa-train in $BIN"; continue; }
    devargs=()
    if { "$BIN/hdpissa-train" --help 2>&1 || true; } | grep -- "--device" >/dev/null; then
      devargs=(--device "$dev")
      [[ "$dev" == cuda ]] && devargs+=(--dtype fp32)
    elif [[ "$dev" != cpu ]]; then
      echo "hf-check $dev: SKIP: this hdpissa-train has no --device option"; continue
    fi
    if [[ "$dev" == cuda ]] && ! nvidia-smi -L >/dev/null 2>&1; then echo "hf-check cuda: SKIP: no GPU"; continue; fi
    rm -rf "$WORK/ckpt-$dev"
    "$BIN/hdpissa-train" "${devargs[@]}" --model "$DATA/stories260K-hf" --tokenizer "$tok" \
      --data "$DATA/gsm8k/train.jsonl" --max-examples 256 --method hdpissa --groups-per-process 4 --rank 4 \
      --lr 2e-3 --max-len 256 --micro-batch 2 --max-steps 30 --threads 1 --quiet --output "$WORK/ckpt-$dev" \
      >"$WORK/train-$dev.log" 2>&1 || { echo "hf-check $dev: training FAILED:"; tail -5 "$WORK/train-$dev.log"; failed=1; continue; }
    check "$dev" "$WORK/ckpt-$dev"
  done
fi
[[ $failed -ne 0 ]] && exit 1
[[ $ran -eq 0 ]] && exit 77
exit 0
