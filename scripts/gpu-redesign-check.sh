#!/usr/bin/env bash
# gpu-redesign-check.sh — the trainer redesign (issue 21) on one GPU machine, in one call:
#   1. builds (preset gpu, sm_90a) this tree's GPU suites, hdpissa-train and hdpissa-eval, and — in
#      parallel — hdpissa-train of a baseline commit unpacked from BASELINE_TAR (git archive);
#   2. runs the GPU suites: hdpissa_llama_cuda_tests (the GPU model vs fp64 / the CPU model),
#      hdpissa_cuda_train_tests (hdpissa-train --device cuda vs the CPU trainer, bf16, resume) and
#      hdpissa_cuda_tests (CudaBackend), then scripts/hf-check.sh on the GPU (transformers load check);
#   3. trainer throughput and peak memory, baseline vs this tree, alternating runs of the same
#      configurations (TinyLlama-1.1B shape, random init, bf16, micro-batch 2 x 512, grad-accum 8,
#      r = 16): HD-PiSSA K = 8 virtual groups and LoRA; STEPS steps each, the first dropped;
#   4. with FIXTURES=1, scripts/make-tokenizer-fixtures.py (transformers / tokenizers exist there).
# Everything lands in $OUT: summary.txt (the table last) and logs.tar.gz.
# Order after the build: throughput, the trainer suite, fixtures, the model and backend suites, hf-check.
# SUITES (default "train model backend"; also decode, export), EXTRA_TARGETS (more tools to build),
# FIDELITY=1 (scripts/w-precision-fidelity.sh beside the suites; FID_ENV, T_FID).
# Usage (repository root): [DATA=.devdata] [BASELINE_TAR=.devdata/baseline-a5b240e.tar.gz] [STEPS=5]
#        [SKIP_TESTS=1] [SKIP_TPUT=1] scripts/gpu-redesign-check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${OUT:-build/gpu/out}
DATA=${DATA:-.devdata}
BASELINE_TAR=${BASELINE_TAR:-.devdata/baseline-a5b240e.tar.gz}
STEPS=${STEPS:-5}
LOGS=/tmp/redesign-logs
mkdir -p "$OUTDIR" "$LOGS"
S="$OUTDIR/summary.txt"
say() { echo "$*" | tee -a "$S"; }
say "gpu-redesign-check at $(git rev-parse --short HEAD 2>/dev/null || echo '?') on $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
t0=$(date +%s)
source scripts/device-env.sh  # PCRE2 where the machine lacks it (.devdata/debs)
if [[ -n "${FIXTURES:-}" && -f scripts/make-tokenizer-fixtures.py ]]; then  # CPU only: beside the build
  ( timeout 240 python3 scripts/make-tokenizer-fixtures.py "$DATA/gsm8k" --out tests/llama/fixtures/tokenizers \
      > "$LOGS/tokenizer-fixtures.log" 2>&1; echo "rc $?" >> "$LOGS/tokenizer-fixtures.log" ) &
  fix_pid=$!
fi
M=/tmp/tinyllama  # made on the GPU while the build runs
[[ -z "${SKIP_TPUT:-}" ]] && { python3 bench/e2e/make_model.py "$M" --seed 0 > "$LOGS/make-model.log" 2>&1 & model_pid=$!; }
targets=(hdpissa-train)
[[ -z "${SKIP_HF:-}" ]] && targets+=(hdpissa-eval)
# EXTRA_TARGETS: more tools to build (e.g. hdpissa-generate hdpissa-rank-analysis for a later warm call)
targets+=(${EXTRA_TARGETS:-})
[[ -n "${FIDELITY:-}" ]] && targets+=(hdpissa-rank-analysis)
# SUITES: which GPU suites to build and run (default all three): train model backend
SUITES=${SUITES:-train model backend}
if [[ -z "${SKIP_TESTS:-}" ]]; then
  [[ " $SUITES " == *" train "* ]] && targets+=(hdpissa_cuda_train_tests)
  [[ " $SUITES " == *" model "* ]] && targets+=(hdpissa_llama_cuda_tests)
  [[ " $SUITES " == *" backend "* ]] && targets+=(hdpissa_cuda_tests)
  [[ " $SUITES " == *" decode "* ]] && targets+=(hdpissa_llama_decode_cuda_tests)
  [[ " $SUITES " == *" export "* ]] && targets+=(hdpissa_cuda_train_tests)
fi
( cmake --preset gpu -DHDPISSA_BUILD_TESTS=ON -DHDPISSA_BUILD_EXAMPLES=ON -DHDPISSA_MPI=OFF > "$LOGS/configure.log" 2>&1 &&
  cmake --build build/gpu -j"${JOBS:-16}" --target "${targets[@]}" > "$LOGS/build.log" 2>&1 ) &
new_pid=$!
base_ok=0
if [[ -z "${SKIP_TPUT:-}" && -f "$BASELINE_TAR" ]]; then
  rm -rf /tmp/baseline && mkdir -p /tmp/baseline && tar -xzf "$BASELINE_TAR" -C /tmp/baseline &&
  ( cd /tmp/baseline && cmake --preset gpu -DHDPISSA_MPI=OFF > "$LOGS/base-configure.log" 2>&1 &&
    cmake --build build/gpu -j"${JOBS_BASE:-8}" --target hdpissa-train > "$LOGS/base-build.log" 2>&1 ) && base_ok=1
fi
wait $new_pid; new_rc=$?
say "build: this tree rc $new_rc, baseline ok $base_ok, $(( $(date +%s) - t0 )) s"
if [[ $new_rc -ne 0 ]]; then grep -E "error" "$LOGS/build.log" | head -30 | tee -a "$S"; tar -czf "$OUTDIR/logs.tar.gz" -C "$LOGS" .; exit 1; fi
# FIDELITY=1: scripts/w-precision-fidelity.sh (small models) on the GPU beside the suites (numbers
# about precision, not time); its table lands in $OUTDIR/fidelity.
if [[ -n "${FIDELITY:-}" ]]; then
  ( timeout "${T_FID:-200}" env BUILD=build/gpu DATA="$DATA" OUT="$OUTDIR/fidelity" ${FID_ENV:-} bash scripts/w-precision-fidelity.sh \
      > "$LOGS/fidelity.log" 2>&1; echo "rc $?" >> "$LOGS/fidelity.log" ) &
  fid_pid=$!
fi
rc=0
DEADLINE=${DEADLINE:-560}  # seconds after the start: later steps are skipped (said in the summary)
left() { echo $(( DEADLINE - ($(date +%s) - t0) )); }
run() {  # name, timeout, command...
  local name=$1 lim=$2; shift 2
  if (( $(left) < 20 )); then say "$name: SKIPPED (time)"; return 0; fi
  (( lim > $(left) )) && lim=$(left)
  local s=$(date +%s)
  timeout "$lim" "$@" > "$LOGS/$name.log" 2>&1
  local r=$?
  say "$name: rc $r, $(( $(date +%s) - s )) s  $(grep -E '^\[doctest\] (test cases|assertions)' "$LOGS/$name.log" | tr '\n' ' ')"
  if [[ $r -ne 0 ]]; then rc=1; grep -B3 -A15 "ERROR" "$LOGS/$name.log" | head -60 >> "$S"; fi
  return 0
}
if [[ -z "${SKIP_TPUT:-}" ]]; then
  wait "$model_pid" || { say "make_model failed"; tail -5 "$LOGS/make-model.log" >> "$S"; }
  cp "$DATA/throughput/tokenizer.model" "$M/" 2>/dev/null
  bins=("new:build/gpu/examples/llama/hdpissa-train")
  [[ $base_ok == 1 ]] && bins+=("baseline:/tmp/baseline/build/gpu/examples/llama/hdpissa-train")
  say ""
  say "| config | binary | tok/s (steps 2..$STEPS) | peak device GiB | last loss |"
  say "|---|---|---|---|---|"
  for rep in $(seq 1 ${REPS:-1}); do
    for cfg in "hdpissa 8" "lora 1"; do
      set -- $cfg
      for b in "${bins[@]}"; do
        label=${b%%:*}; bin=${b#*:}
        m="$LOGS/tput-$1-k$2-$label-$rep.jsonl"
        (( $(left) < 30 )) && { say "| $1 K=$2 | $label | SKIPPED (time) | | |"; continue; }
        timeout $(( $(left) < 120 ? $(left) : 120 )) "$bin" --device cuda --dtype bf16 --method "$1" --groups-per-process "$2" --model "$M" \
          --tokenizer "$DATA/throughput/tokenizer.model" --data "$DATA/throughput/train.jsonl" --micro-batch 2 \
          --max-len 512 --grad-accum 8 --rank 16 --alpha 16 --lr 1e-4 --max-steps "$STEPS" $([[ $1 == *pissa* ]] && echo --svd randomized) --quiet \
          --metrics "$m" > "$LOGS/tput-$1-k$2-$label-$rep.log" 2>&1 || { say "| $1 K=$2 | $label | FAILED rc $? | | |"; continue; }
        python3 - "$m" "$1 K=$2" "$label" <<'PY' | tee -a "$S"
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
steps = [r for r in recs if r.get("type") == "step"][1:]
tok = sum(r["tokens"] for r in steps); sec = sum(r["step_s"] for r in steps)
peak = max([r.get("peak_device_bytes", 0) for r in recs] + [0]) / 2**30
print(f"| {sys.argv[2]} | {sys.argv[3]} | {tok / sec:.0f} | {peak:.2f} | {steps[-1]['loss']:.4f} |")
PY
      done
    done
  done
fi
if [[ -z "${SKIP_TESTS:-}" ]]; then
  [[ " $SUITES " == *" train "* ]] && HDPISSA_GPU_TEST_DATA="$DATA" HDPISSA_GPU_TEST_SCRATCH=/tmp/cuda-train-scratch \
    run cuda-train-tests ${T_TRAIN:-200} build/gpu/tests/llama/cuda_train/hdpissa_cuda_train_tests --no-intro
  grep -E "shared init|fresh GPU|resume" "$LOGS/cuda-train-tests.log" | head -20 >> "$S"
fi
if [[ -n "${fix_pid:-}" ]]; then
  wait "$fix_pid"; say "tokenizer-fixtures: $(tail -1 "$LOGS/tokenizer-fixtures.log")"
  [[ -d tests/llama/fixtures/tokenizers ]] && tar -czf "$OUTDIR/tokenizer-fixtures.tar.gz" -C tests/llama/fixtures tokenizers
fi
if [[ -z "${SKIP_TESTS:-}" ]]; then
  [[ " $SUITES " == *" model "* ]] && HDPISSA_DATA="$DATA" run llama-cuda-tests ${T_MODEL:-120} build/gpu/tests/llama/cuda/hdpissa_llama_cuda_tests --no-intro
  [[ " $SUITES " == *" backend "* ]] && run cuda-backend-tests ${T_BACKEND:-120} build/gpu/tests/cuda/hdpissa_cuda_tests --no-intro
  [[ " $SUITES " == *" decode "* ]] && HDPISSA_DATA="$DATA" run llama-decode-tests ${T_DECODE:-120} build/gpu/tests/llama/cuda/hdpissa_llama_decode_cuda_tests --no-intro
  [[ " $SUITES " == *" export "* ]] && HDPISSA_DATA="$DATA" HDPISSA_GPU_TEST_DATA="$DATA" run lora-export-tests ${T_EXPORT:-120} build/gpu/tests/llama/cuda_train/hdpissa_cuda_train_tests --no-intro "--test-case=lora export:*"
  if [[ -z "${SKIP_HF:-}" ]]; then
    DATA="$DATA" DEVICES=cuda BUILD_DIR=build/gpu run hf-check ${T_HF:-90} scripts/hf-check.sh
    tail -3 "$LOGS/hf-check.log" >> "$S"
  fi
fi
if [[ -n "${fid_pid:-}" ]]; then
  wait "$fid_pid"; say "fidelity: $(tail -1 "$LOGS/fidelity.log")"
  [[ -f "$OUTDIR/fidelity/w-precision-fidelity.md" ]] && cat "$OUTDIR/fidelity/w-precision-fidelity.md" >> "$S"
fi
say "total $(( $(date +%s) - t0 )) s, rc $rc"
tar -czf "$OUTDIR/logs.tar.gz" -C "$LOGS" .
exit $rc
