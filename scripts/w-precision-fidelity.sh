#!/usr/bin/env bash
# Fidelity of the W-precision policies (spec §5, issue 13 item 3): the same hdpissa runs under
# fp32-master, bf16-compensated and bf16-sr, compared to fp32-master. One markdown table in
# $OUT/w-precision-fidelity.md (+ w-precision-loss-curves.csv, logs, metrics):
#   ‖W_policy − W_fp32‖ / ‖ΔW_fp32‖, train / held-out loss curves, rank metrics of ΔW
#   (hdpissa-rank-analysis) with the policy's noise floor (measured and, for SR, predicted).
#
# Runs (hdpissa, K = 4 groups on one device, Sum, Adam, cosine, lr ∈ LRS):
#   - stories260K (HDPISSA_DATA/stories260K-hf, rounded to bf16 values first so that every policy
#     starts from the same W_0), GSM8K train / test;
#   - on the GPU also TinyLlama's shape with TL_LAYERS layers, random init (scripts/make-random-llama.py,
#     bf16), the LLaMA-2 tokenizer; "random init": numbers about precision, never about quality.
#
# GPU (the lead's H200, ~3–5 min of GPU time at the defaults):
#   BUILD=build/gpu OUT=runs/w-precision scripts/w-precision-fidelity.sh
# CPU (stories260K only, fp32 compute; a check that the pipeline works end to end):
#   DEVICE=cpu STEPS=20 BUILD=build/ci OUT=/tmp/wprec-fid scripts/w-precision-fidelity.sh
#
# Environment:
#   DEVICE      cuda (default) | cpu        BUILD  build dir with hdpissa-train + hdpissa-rank-analysis
#   PREBUILT    instead of BUILD: a folder holding both binaries (.devbin, scripts/prebuilt-pack.sh)
#   DATA        $HDPISSA_DATA or ../shared/data                    OUT  output folder (runs/w-precision)
#   STEPS       stories260K steps (default 300 GPU, 20 CPU)        TL_STEPS TinyLlama steps (default 200)
#   LRS         learning rates (default "2e-5 2e-4")               TL_LAYERS TinyLlama layers (default 2)
#   MODELS      "stories tinyllama" on cuda, "stories" on cpu      POLICIES (default all three)
#   TL_MODULES  TinyLlama's analysed targets (default q,k,o,down: one of each shape; the double-
#               precision SVDs of 5632×2048 matrices dominate the host time), RANK_JOBS analyses at a
#               time in the background (4), RANK_THREADS threads each (nproc / RANK_JOBS)
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEVICE=${DEVICE:-cuda}
BUILD=${BUILD:-build/gpu}
DATA=${DATA:-${HDPISSA_DATA:-$ROOT/../shared/data}}
OUT=${OUT:-runs/w-precision}
LRS=${LRS:-2e-5 2e-4}
POLICIES=${POLICIES:-fp32-master bf16-compensated bf16-sr}
TL_LAYERS=${TL_LAYERS:-2}
TL_STEPS=${TL_STEPS:-200}
TL_MODULES=${TL_MODULES:-q,k,o,down}
RANK_JOBS=${RANK_JOBS:-4}                                  # rank analyses at a time (background)
RANK_THREADS=${RANK_THREADS:-$(( $(nproc) / RANK_JOBS > 0 ? $(nproc) / RANK_JOBS : 1 ))}
if [ "$DEVICE" = cpu ]; then
  STEPS=${STEPS:-20}; MODELS=${MODELS:-stories}; DTYPE=fp32
else
  STEPS=${STEPS:-300}; MODELS=${MODELS:-stories tinyllama}; DTYPE=bf16
fi
[ -f "$ROOT/scripts/device-env.sh" ] && source "$ROOT/scripts/device-env.sh" 2>/dev/null
TRAIN=${PREBUILT:+$PREBUILT/hdpissa-train}; TRAIN=${TRAIN:-$BUILD/examples/llama/hdpissa-train}  # PREBUILT=.devbin
RANK=${PREBUILT:+$PREBUILT/hdpissa-rank-analysis}; RANK=${RANK:-$BUILD/bench/rank_analysis/hdpissa-rank-analysis}
for b in "$TRAIN" "$RANK"; do
  [ -x "$b" ] || { echo "w-precision-fidelity: missing $b (cmake --build $BUILD --target hdpissa-train hdpissa-rank-analysis)" >&2; exit 2; }
done
PY=python3
$PY -c "import numpy" 2>/dev/null || PY=/usr/bin/python3
$PY -c "import numpy" 2>/dev/null || { echo "w-precision-fidelity: needs python3 with numpy" >&2; exit 2; }
mkdir -p "$OUT"/{models,runs,logs}
OUT=$(cd "$OUT" && pwd)
say() { echo "[w-precision-fidelity $(date +%T)] $*"; }

# ---- models (W_0 bf16-representable for every policy)
if [[ " $MODELS " == *" stories "* ]] && [ ! -f "$OUT/models/stories/config.json" ]; then
  $PY "$ROOT/scripts/w-precision-fidelity.py" round-bf16 "$DATA/stories260K-hf" "$OUT/models/stories" || exit 1
fi
if [[ " $MODELS " == *" tinyllama "* ]] && [ ! -f "$OUT/models/tinyllama/config.json" ]; then
  say "making TinyLlama-shaped model ($TL_LAYERS layers, random init, bf16)"
  $PY "$ROOT/scripts/make-random-llama.py" --preset tinyllama --layers "$TL_LAYERS" --dtype bf16 \
    --tokenizer "$DATA/llama2_tokenizer/tokenizer.model" --out "$OUT/models/tinyllama" > "$OUT/logs/make-model.log" 2>&1 ||
    { cat "$OUT/logs/make-model.log"; exit 1; }
fi

# ---- runs
groups_json=""
rc=0
for model in $MODELS; do
  if [ "$model" = stories ]; then
    args=(--model "$OUT/models/stories" --tokenizer "$OUT/models/stories/tokenizer.model" --groups-per-process 4 --rank 4
          --micro-batch 8 --max-len 256 --max-steps "$STEPS" --eval-every $(( STEPS / 4 > 0 ? STEPS / 4 : 1 )))
    steps=$STEPS
    rank_args=(--threads "$RANK_THREADS")
  else
    args=(--model "$OUT/models/tinyllama" --tokenizer "$OUT/models/tinyllama/tokenizer.model" --groups-per-process 4
          --rank 16 --micro-batch 4 --max-len 256 --max-steps "$TL_STEPS" --svd randomized
          --eval-every $(( TL_STEPS / 4 > 0 ? TL_STEPS / 4 : 1 )))
    steps=$TL_STEPS
    rank_args=(--threads "$RANK_THREADS" --modules "$TL_MODULES")
  fi
  for lr in $LRS; do
    runs_json=""
    for p in $POLICIES; do
      tag="$model-lr$lr-$p"
      o="$OUT/runs/$tag"
      rm -rf "$o"
      say "$tag"
      t0=$(date +%s)
      "$TRAIN" --device "$DEVICE" --dtype "$DTYPE" --method hdpissa --w-precision "$p" --lr "$lr" --seed 1 \
        --data "$DATA/gsm8k/train.jsonl" --eval-data "$DATA/gsm8k/test.jsonl" --eval-examples 32 --warmup-ratio 0.03 \
        --output "$o" --metrics "$OUT/runs/$tag.jsonl" "${args[@]}" > "$OUT/logs/$tag.log" 2>&1 ||
        { rc=1; say "$tag failed:"; tail -5 "$OUT/logs/$tag.log"; }
      say "$tag: $(( $(date +%s) - t0 )) s; $(grep -E 'eval loss \(after' "$OUT/logs/$tag.log" | tail -1)"
      if [ -d "$o" ]; then
        # the double-precision SVDs run in the background, beside the next training runs (they
        # dominated the wall time when run in line: ~1 min per TinyLlama policy on 16 cores)
        while (( $(jobs -rp | wc -l) >= RANK_JOBS )); do wait -n; done
        "$RANK" "${rank_args[@]}" --init "$OUT/models/$model" --final "$o" --label "$tag" --json "$OUT/runs/$tag.rank.json" \
          > "$OUT/logs/$tag.rank.log" 2>&1 &
        if [ "$p" != fp32-master ] && [ -d "$OUT/runs/$model-lr$lr-fp32-master" ]; then
          while (( $(jobs -rp | wc -l) >= RANK_JOBS )); do wait -n; done
          "$RANK" "${rank_args[@]}" --init "$OUT/runs/$model-lr$lr-fp32-master" --final "$o" --label "$tag-err" \
            --json "$OUT/runs/$tag.err.json" > "$OUT/logs/$tag.err.log" 2>&1 &
        fi
      fi
      runs_json+="${runs_json:+,}\"$p\": {\"output\": \"$o\", \"metrics\": \"$OUT/runs/$tag.jsonl\", \"log\": \"$OUT/logs/$tag.log\",
        \"rank_json\": \"$OUT/runs/$tag.rank.json\", \"err_json\": \"$OUT/runs/$tag.err.json\"}"
    done
    groups_json+="${groups_json:+,}{\"model\": \"$model\", \"lr\": \"$lr\", \"w0\": \"$OUT/models/$model\", \"steps\": $steps, \"runs\": {$runs_json}}"
  done
done
wait  # the rank analyses
for f in "$OUT"/logs/*.rank.log "$OUT"/logs/*.err.log; do
  j="$OUT/runs/$(basename "${f%.log}").json"
  [ -f "$j" ] || { rc=1; say "rank analysis failed: $f"; tail -3 "$f"; }
done
dev_name=$DEVICE
[ "$DEVICE" = cuda ] && command -v nvidia-smi > /dev/null && dev_name="cuda: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
cat > "$OUT/runs.json" <<EOF
{"device": "$dev_name", "note": "dtype $DTYPE, stories260K $STEPS steps, TinyLlama-shaped ($TL_LAYERS layers, random init) $TL_STEPS steps, K = 4, seed 1",
 "groups": [$groups_json]}
EOF
$PY "$ROOT/scripts/w-precision-fidelity.py" report "$OUT" "$OUT/w-precision-fidelity.md" || rc=1
say "wrote $OUT/w-precision-fidelity.md (rc $rc)"
exit $rc
