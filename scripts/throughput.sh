#!/usr/bin/env bash
# throughput.sh — side-by-side training throughput, our trainer vs PEFT, in one go on one GPU
# (docs/throughput.md). Same random-init TinyLlama-1.1B-shaped model (made here by transformers,
# bf16 safetensors), same data (every micro-batch 2 x 512 tokens), grad accumulation 8, r = 16,
# alpha 16, targets q,k,v,o,gate,up,down, AdamW, bf16.
#
#   1. builds hdpissa-train + hdpissa-eval (cmake --preset gpu, build/gpu) unless PREBUILT=DIR;
#   2. makes the model (bench/e2e/make_model.py) in $WORK/tinyllama unless MODEL_DIR exists;
#   3. PEFT side: bf16 matmul peak, then LoRA (fp32 adapters + autocast, and all-bf16), PiSSA (pissa_niter_4), full (bench/e2e/peft_throughput.py);
#   4. our side: hdpissa-train --device cuda --dtype bf16 for lora, pissa, hdpissa K=1, hdpissa K=8
#      (virtual groups on the one GPU; tokens/s counts all groups' tokens), full — skipped with a
#      message when the binary or its --device option is missing;
#   5. bench/e2e/summarize.py: $OUT/throughput.{json,csv,md}; the table is printed last.
#
# Inputs (git-ignored; made on the developer machine by `scripts/throughput.sh prepare`, which
# needs a CPU build of hdpissa-eval in BUILD_DIR and the shared data):
#   .devdata/throughput/train.jsonl        GSM8K-train text, every example >= 512 LLaMA-2 tokens
#   .devdata/throughput/tokenizer.model    the LLaMA-2 SentencePiece model (32000 pieces)
#   .devdata/throughput/batches.json       hdpissa-eval --tokens-only ids of train.jsonl (micro-batch 2):
#                                          the PEFT side trains on exactly these ids
# Env: OUT (default build/gpu/throughput), OURS_STEPS (4; the first OURS_SKIP=1 dropped),
#      PEFT_STEPS (4) PEFT_WARMUP (2), OURS_CONFIGS ("lora pissa hdpissa-K1 hdpissa-K8 full"),
#      PEFT_METHODS (lora,lora-bf16,pissa,full), OURS_TIMEOUT (s per config, 150), JOBS (16).
#      A config may end in _flash or _gemm: that run's --attention (the GPU model's attention;
#      default auto = flash for bf16 at head_dim 64 / 128).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEV="$ROOT/.devdata/throughput"

if [[ "${1:-}" == "prepare" ]]; then  # on the developer machine
  data="${HDPISSA_DATA:-$ROOT/../shared/data}"
  eval_bin="${BUILD_DIR:-$ROOT/build/g3}/examples/llama/hdpissa-eval"
  [[ -x "$eval_bin" ]] || { echo "throughput.sh prepare: expected a built hdpissa-eval at $eval_bin (set BUILD_DIR)" >&2; exit 2; }
  [[ -f "$data/gsm8k/train.jsonl" && -f "$data/llama2_tokenizer/tokenizer.model" ]] \
    || { echo "throughput.sh prepare: expected gsm8k/train.jsonl and llama2_tokenizer/tokenizer.model under $data" >&2; exit 2; }
  mkdir -p "$DEV"
  python3 "$ROOT/bench/e2e/make_data.py" "$data/gsm8k/train.jsonl" "$DEV/train.jsonl" --records 1200 || exit 1
  cp "$data/llama2_tokenizer/tokenizer.model" "$DEV/tokenizer.model"
  "$eval_bin" --tokens-only --tokenizer "$DEV/tokenizer.model" --data "$DEV/train.jsonl" --max-len 512 \
    --eval-examples 256 --micro-batch 2 --json "$DEV/batches.json" || exit 1
  du -sh "$DEV"
  exit 0
fi

OUTDIR="${OUT:-$ROOT/build/gpu/throughput}"
WORK="${WORK:-/tmp/hdpissa-throughput}"
mkdir -p "$OUTDIR" "$WORK/ours"
rm -f "$WORK"/ours/ours-*.jsonl "$WORK/peft.jsonl"
for f in train.jsonl tokenizer.model batches.json; do
  [[ -f "$DEV/$f" ]] || { echo "throughput.sh: expected $DEV/$f (run 'scripts/throughput.sh prepare' on the developer machine and carry .devdata)" >&2; exit 2; }
done
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /'

# ---- 1. build
if [[ -n "${PREBUILT:-}" ]]; then
  BIN="$PREBUILT"
else
  BIN="$ROOT/build/gpu/examples/llama"
  t0=$(date +%s)
  (cd "$ROOT" && cmake --preset gpu >"$WORK/configure.log" 2>&1 \
     && cmake --build build/gpu --target hdpissa-train hdpissa-eval -j"${JOBS:-16}" >"$WORK/build.log" 2>&1) \
    || echo "throughput.sh: build FAILED (the PEFT side still runs): $(grep -E 'error' "$WORK/build.log" "$WORK/configure.log" 2>/dev/null | head -3)"
  echo "build: $(( $(date +%s) - t0 )) s"
fi

# ---- 2. model
MODEL_DIR="${MODEL_DIR:-$WORK/tinyllama}"
if [[ ! -f "$MODEL_DIR/config.json" ]]; then
  python3 "$ROOT/bench/e2e/make_model.py" "$MODEL_DIR" --seed 0 || { echo "throughput.sh: make_model.py failed" >&2; exit 1; }
fi

# ---- 3. PEFT side
t0=$(date +%s)
PYTHONUNBUFFERED=1 python3 "$ROOT/bench/e2e/peft_throughput.py" --model "$MODEL_DIR" --batches "$DEV/batches.json" \
  --methods "${PEFT_METHODS:-lora,lora-bf16,pissa,full}" --rank 16 --alpha 16 --grad-accum 8 \
  --warmup "${PEFT_WARMUP:-2}" --steps "${PEFT_STEPS:-4}" --peak --out "$WORK/peft.jsonl"
echo "peft side: rc $?, $(( $(date +%s) - t0 )) s"

# ---- 4. our side
note=""
TRAIN="$BIN/hdpissa-train"
if [[ ! -x "$TRAIN" ]]; then
  note="Our side not run: no hdpissa-train binary at $TRAIN (build failed or not built)."
elif ! { "$TRAIN" --help 2>&1 || true; } | grep -- "--device" >/dev/null; then
  note="Our side not run: this hdpissa-train has no --device option (the GPU trainer is not in this tree)."
else
  for cfg in ${OURS_CONFIGS:-lora pissa hdpissa-K1 hdpissa-K8 full}; do
    att=""; [[ "$cfg" == *_* ]] && att="${cfg##*_}"   # e.g. hdpissa-K8_gemm: --attention gemm
    base="${cfg%%_*}"
    method="${base%%-K*}"; k=1; [[ "$base" == *-K* ]] && k="${base##*-K}"
    lr=2e-5; [[ "$method" == full ]] && lr=1e-5
    t0=$(date +%s)
    timeout "${OURS_TIMEOUT:-150}" "$TRAIN" --device cuda --dtype bf16 --attention "${att:-auto}" --model "$MODEL_DIR" \
      --tokenizer "$DEV/tokenizer.model" --data "$DEV/train.jsonl" --method "$method" --groups-per-process "$k" \
      --rank 16 --alpha 16 --targets q,k,v,o,gate,up,down --svd randomized --micro-batch 2 --grad-accum 8 \
      --max-len 512 --max-steps "${OURS_STEPS:-4}" --lr "$lr" --warmup-ratio 0 --log-every 1 \
      --metrics "$WORK/ours/ours-$cfg.jsonl" >"$WORK/ours/ours-$cfg.log" 2>&1
    rc=$?
    echo "ours $cfg: rc $rc, $(( $(date +%s) - t0 )) s; $(grep -E 'trained|error' "$WORK/ours/ours-$cfg.log" | tail -1)"
    [[ $rc -ne 0 ]] && tail -5 "$WORK/ours/ours-$cfg.log"
  done
fi
[[ -n "$note" ]] && echo "$note"

# ---- 5. summary
python3 "$ROOT/bench/e2e/summarize.py" --peft "$WORK/peft.jsonl" --ours-dir "$WORK/ours" \
  --config "$MODEL_DIR/config.json" --out-prefix "$OUTDIR/throughput" --skip "${OURS_SKIP:-1}" --note "$note"
cp "$WORK/peft.jsonl" "$OUTDIR/peft.jsonl" 2>/dev/null
(cd "$WORK" && tar czf "$OUTDIR/throughput-logs.tar.gz" ours *.log 2>/dev/null)
exit 0
