#!/usr/bin/env bash
# throughput.sh — training throughput and peak memory, our trainer vs the strongest PEFT setups, in
# one device call on one GPU (docs/throughput.md, "How to run"). Random-init LLaMA models made here
# by transformers (bf16 safetensors), same data (every micro-batch M x 512 tokens, no padding),
# r = 16, alpha 16, targets q,k,v,o,gate,up,down, AdamW, bf16, no gradient checkpointing.
# One markdown table per (model shape, micro-batch), every ratio against the best PEFT row of it.
#
#   1. builds hdpissa-train + hdpissa-eval (cmake --preset gpu, build/gpu) unless PREBUILT=DIR;
#      BASELINE_TAR (a `git archive` .tar.gz of another commit) is built beside it, unless BASELINE_BIN;
#   2. bf16 matmul peak (for MFU), once;
#   3. per shape in SHAPES: makes the model (bench/e2e/make_model.py --preset SHAPE) unless it exists;
#   4. per micro-batch M in MICRO_BATCHES (grad-accum G = TOKENS_PER_STEP / (M x 512), or "M:G"):
#      our configs (OURS_CONFIGS), the baseline binary's (BASELINE_CONFIGS, rows "ours@baseline"),
#      then the PEFT methods (PEFT_METHODS; one process per method: clean peak memory), each run
#      under its own timeout and the global DEADLINE_S;
#   5. bench/e2e/summarize.py after every run (so a call cut short still returns the table so far).
#
# Inputs (git-ignored; made on the developer machine by `scripts/throughput.sh prepare`, which
# needs a CPU build of hdpissa-eval in BUILD_DIR and the shared data; carry .devdata):
#   .devdata/throughput/train.jsonl        GSM8K-train text, every example >= 512 LLaMA-2 tokens
#   .devdata/throughput/tokenizer.model    the LLaMA-2 SentencePiece model (32000 pieces)
#   .devdata/throughput/batches.json       hdpissa-eval --tokens-only ids of train.jsonl (micro-batch 2):
#                                          the PEFT side trains on exactly these ids (regrouped for M > 2)
# Output ($OUT, default build/gpu/throughput; 5 files): throughput.md (the tables), throughput.json,
#   throughput.csv, throughput.log (this script's console), throughput-logs.tar.gz (every run's
#   metrics JSONL, log and status, PEFT records, model/build logs).
#
# Env (defaults in brackets; a *_7B variable applies to llama2-7b only and wins over the plain one):
#   SHAPES [tinyllama]                  tinyllama and/or llama2-7b
#   MICRO_BATCHES ["2 8"]               "M" or "M:G" entries; TOKENS_PER_STEP [8192] sets G for "M"
#   OURS_CONFIGS ["lora pissa hdpissa-K1 hdpissa-K8 full"; 7B: "lora hdpissa-K1 hdpissa-K8"]
#                                       <method>[-K<groups>][_flash|_gemm][@<w-precision>][+ckpt|+keep][+fp8][+tune]; hdpissa-K1 = one
#                                       group per process (what each GPU holds in a K-GPU run), K8 = 8 virtual groups;
#                                       +ckpt = --activation-checkpointing (e.g. lora+ckpt, hdpissa-K1@bf16-sr+ckpt);
#                                       +nohint = HDPISSA_FP8_PRODUCER_AMAX=0 (with +fp8: every FP8 quantisation
#                                       runs its own amax pass; the A/B of the producer-kept amax)
#                                       +unstacked = HDPISSA_STACKED_LINEARS=0 (q|k|v, gate|up one GEMM per
#                                       member: the A/B of the stacked GEMMs)
#                                       +graphs = --cuda-graphs (and --pad-to-multiple SEQ: one shape);
#                                       +onestream = HDPISSA_ADAPTER_STREAM=0 (the DWU adapter gradients on
#                                       the model's stream: the A/B of the second stream)
#                                       +keep = --keep-swiglu (every layer's SwiGLU output kept for the backward;
#                                       not with +ckpt);
#                                       +fp8 = --compute fp8 (e.g. lora+fp8, hdpissa-K1@bf16-sr+ckpt+fp8);
#                                       +tune = HDPISSA_CUDA_GEMM_TUNING_BF16=exact for that run (bit-exact cuBLASLt
#                                       choice of the bf16 GEMMs; other runs get the caller's value, default off);
#                                       +3xtf32 = HDPISSA_CUDA_DWU_GEMM=3xtf32 (the sm_90a DWU kernel instead of
#                                       auto's CUDA-core kernel at 2Kr <= 64: a before/after of the DWU step);
#                                       +band<N> / +bandall = HDPISSA_FLASH_BAND=N / all (the flash kernels'
#                                       block order: N heads per heavy-tiles-first band; +band1 = the order
#                                       before session 27);
#                                       +fused = HDPISSA_FUSED_ADAPTER_GRADS=1 (the DWU methods' adapter
#                                       gradients through adapter_grads.cuh instead of MutedLinear's cuBLAS GEMMs)
#                                       +rows4 = HDPISSA_CUDA_DWU_ROWS=4 (the low-rank DWU kernel's 4-rows-per-thread
#                                       tiling; same bits as the default 8)
#                                       +streams<N> = HDPISSA_CUDA_DWU_STREAMS=N (the DWU step's per-layer low-rank
#                                       updates on N streams in turn; same bits)
#                                       +joined = HDPISSA_DWU_OVERLAP=0 (the DWU step's W updates joined
#                                       before the next forward, as before session 31; the default overlaps
#                                       them with it, each target's forward waiting for its layer; same bits)
#                                       +sideprio = HDPISSA_ADAPTER_STREAM_PRIORITY=high (the adapters'
#                                       second stream at the device's greatest priority: the default since
#                                       session 35; same bits); +sidelow = ...=default (the priority before)
#                                       +dwuprio = HDPISSA_CUDA_DWU_PRIORITY=high (the DWU step's W-update
#                                       streams at the greatest priority; same bits)
#                                       +chunk<rows> = HDPISSA_LOSS_CHUNK_ROWS=<rows> (the loss's rows of logits
#                                       alive at once; default CudaLlama::default_loss_chunk_rows, 1024 at 32k vocab)
#   BASELINE_BIN                        a second hdpissa-train (file, or a directory holding one):
#                                       its runs are the "ours@baseline" rows (before/after a change)
#   BASELINE_TAR                        instead: a git-archive .tar.gz, built here (JOBS_BASE [8] jobs)
#   BASELINE_LABEL                      text naming the baseline in the table (default: the path)
#   BASELINE_CONFIGS ["lora hdpissa-K8"]
#   PEFT_METHODS ["lora-bf16,lora-compile,lora-bf16-compile"; 7B: "lora-bf16,lora-bf16-compile"]
#                                       lora|pissa|full + -bf16 (bf16 adapters, no autocast) -compile
#                                       (torch.compile) -cg (compile, mode reduce-overhead); e.g. also
#                                       lora (PEFT defaults, eager), pissa-compile, lora-bf16-cg
#   PEFT_COMPILE_MODE [default]  PEFT_COMPILE_TARGET [peft]  PEFT_GRAD_CKPT [0]
#   OURS_STEPS [4] OURS_SKIP [1]        our steps per run, the first OURS_SKIP dropped
#   PEFT_WARMUP [2] PEFT_STEPS [3]      PEFT warm-up steps (the first holds the compilation) + timed
#   OURS_TIMEOUT [150; 7B 360]  PEFT_TIMEOUT [240; 7B 420]  (s per run; *_7B for the 7B shape)
#   DEADLINE_S [0 = none]               seconds after the start: later runs are capped, then skipped
#                                       (use ~570 in a 600-s device call)
#   FAST=1                              OURS_STEPS 3, PEFT_WARMUP 1, PEFT_STEPS 2, ours "lora
#                                       hdpissa-K8", baseline "hdpissa-K8", PEFT "lora-bf16,lora-bf16-compile"
#   LAYERS_7B [32] LAYERS_TINY [22]     a shorter model of the same width (the table says so)
#   MODEL_DIR [$WORK/tinyllama]  MODEL_DIR_7B [$WORK/llama2-7b-L<layers>]   made unless config.json exists
#   OURS_ARGS / BASELINE_ARGS           extra hdpissa-train flags for the new / baseline binary
#   WORK [/tmp/hdpissa-throughput] (models, runs, inductor cache; use build/... to keep models between
#   calls on a warm machine), PREBUILT, JOBS [16], OUT.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEV="${THROUGHPUT_DATA:-$ROOT/.devdata/throughput}"  # SEQ=2048: THROUGHPUT_DATA=.devdata/throughput2048
case "$DEV" in /*) ;; *) DEV="$PWD/$DEV" ;; esac

if [[ "${1:-}" == "prepare" ]]; then  # on the developer machine
  data="${HDPISSA_DATA:-$ROOT/../shared/data}"
  eval_bin="${BUILD_DIR:-$ROOT/build/g3}/examples/llama/hdpissa-eval"
  [[ -x "$eval_bin" ]] || { echo "throughput.sh prepare: expected a built hdpissa-eval at $eval_bin (set BUILD_DIR)" >&2; exit 2; }
  [[ -f "$data/gsm8k/train.jsonl" && -f "$data/llama2_tokenizer/tokenizer.model" ]] \
    || { echo "throughput.sh prepare: expected gsm8k/train.jsonl and llama2_tokenizer/tokenizer.model under $data" >&2; exit 2; }
  mkdir -p "$DEV"
  pseq="${SEQ:-512}"  # every example >= pseq tokens: ~6 characters per LLaMA-2 token, with margin
  python3 "$ROOT/bench/e2e/make_data.py" "$data/gsm8k/train.jsonl" "$DEV/train.jsonl" --records $(( 1200 * 512 / pseq )) \
    --min-chars $(( 3000 * pseq / 512 )) || exit 1
  cp "$data/llama2_tokenizer/tokenizer.model" "$DEV/tokenizer.model"
  "$eval_bin" --tokens-only --tokenizer "$DEV/tokenizer.model" --data "$DEV/train.jsonl" --max-len "$pseq" \
    --eval-examples $(( 256 * 512 / pseq )) --micro-batch 2 --json "$DEV/batches.json" || exit 1
  du -sh "$DEV"
  exit 0
fi

T0=$(date +%s)
OUTDIR="${OUT:-$ROOT/build/gpu/throughput}"
WORK="${WORK:-/tmp/hdpissa-throughput}"
case "$OUTDIR" in /*) ;; *) OUTDIR="$PWD/$OUTDIR" ;; esac
case "$WORK" in /*) ;; *) WORK="$PWD/$WORK" ;; esac
RUNS="$WORK/runs"
mkdir -p "$OUTDIR" "$WORK"
rm -rf "$RUNS" "$WORK/ours" "$WORK/peft.jsonl"
mkdir -p "$RUNS"
LOG="$OUTDIR/throughput.log"
: >"$LOG"
rm -f "$OUTDIR"/throughput.{md,json,csv} "$OUTDIR/throughput-logs.tar.gz"
say() { echo "$*" | tee -a "$LOG"; }
elapsed() { echo $(( $(date +%s) - T0 )); }

FAST="${FAST:-0}"
if [[ "$FAST" == 1 ]]; then
  : "${OURS_STEPS:=3}" "${PEFT_WARMUP:=1}" "${PEFT_STEPS:=2}" "${OURS_CONFIGS:=lora hdpissa-K8}"
  : "${BASELINE_CONFIGS:=hdpissa-K8}" "${PEFT_METHODS:=lora-bf16,lora-bf16-compile}"
fi
OURS_STEPS="${OURS_STEPS:-4}"
OURS_SKIP="${OURS_SKIP:-1}"
PEFT_WARMUP="${PEFT_WARMUP:-2}"
PEFT_STEPS="${PEFT_STEPS:-3}"
SEQ="${SEQ:-512}"  # sequence length of every run (the prepared data: .devdata/throughput, made at 512)
TOKENS_PER_STEP="${TOKENS_PER_STEP:-8192}"
DEADLINE_S="${DEADLINE_S:-0}"
SHAPES="${SHAPES:-tinyllama}"
MICRO_BATCHES="${MICRO_BATCHES:-2 8}"
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-$WORK/inductor-cache}"

# per-shape setting: NAME_7B (llama2-7b only) > NAME > the shape's default
shape_val() {  # NAME SHAPE DEFAULT_TINY DEFAULT_7B
  local name=$1 shape=$2 v7="${1}_7B"
  if [[ "$shape" == llama2-7b ]]; then
    if [[ -n "${!v7:-}" ]]; then echo "${!v7}"; elif [[ -n "${!name:-}" ]]; then echo "${!name}"; else echo "$4"; fi
  else
    if [[ -n "${!name:-}" ]]; then echo "${!name}"; else echo "$3"; fi
  fi
}

# a run's timeout under the deadline: min(LIMIT, what is left - 15 s for the summary); 0 = skip
capped() {
  local lim=$1
  if (( DEADLINE_S > 0 )); then
    local left=$(( DEADLINE_S - $(elapsed) - 15 ))
    (( left < lim )) && lim=$left
    (( lim < 20 )) && lim=0
  fi
  echo "$lim"
}

write_status() {  # FILE RC WALL TIMEOUT SKIPPED LOGFILE
  python3 - "$@" <<'PY'
import json, re, sys
path, rc, wall, to, skipped, log = sys.argv[1:7]
last = ""
try:
    lines = open(log, errors="replace").read().splitlines()
    hits = [l for l in lines if re.search(r"error|Error|ERROR|FAILED|what\(\)|Killed|out of memory|Traceback", l)]
    last = (hits or lines or [""])[-1].strip()[:300]
except OSError:
    pass
rc = int(rc)
import time
json.dump({"rc": rc, "wall_s": float(wall), "timeout_s": int(to), "timed_out": rc in (124, 137),
           "ended": time.time(),
           "skipped": skipped or None, "last_line": last}, open(path, "w"))
PY
}

snapshot() {  # the tables so far + every log, into $OUT (quiet); FINAL=1 prints the tables
  local notes=()
  [[ -n "${NOTE_OURS:-}" ]] && notes+=(--note "$NOTE_OURS")
  [[ -n "${NOTE_BASE:-}" ]] && notes+=(--note "$NOTE_BASE")
  if [[ "${1:-}" == final ]]; then
    python3 "$ROOT/bench/e2e/summarize.py" --runs "$RUNS" --out-prefix "$OUTDIR/throughput" --skip "$OURS_SKIP" \
      "${notes[@]}" 2>&1 | tee -a "$LOG"
  else
    python3 "$ROOT/bench/e2e/summarize.py" --runs "$RUNS" --out-prefix "$OUTDIR/throughput" --skip "$OURS_SKIP" \
      "${notes[@]}" >/dev/null 2>>"$LOG"
  fi
  (cd "$WORK" && tar czf "$OUTDIR/throughput-logs.tar.gz.tmp" runs logs 2>/dev/null \
     && mv -f "$OUTDIR/throughput-logs.tar.gz.tmp" "$OUTDIR/throughput-logs.tar.gz")
}

for f in train.jsonl tokenizer.model batches.json; do
  [[ -f "$DEV/$f" ]] || { say "throughput.sh: expected $DEV/$f (run 'scripts/throughput.sh prepare' on the developer machine and carry .devdata)"; exit 2; }
done
mkdir -p "$WORK/logs"
say "throughput.sh at $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?') (binaries: $({ tr '\n' ' ' < "${PREBUILT:-/nonexistent}/COMMIT"; } 2>/dev/null || echo 'built here')): SHAPES='$SHAPES' MICRO_BATCHES='$MICRO_BATCHES' FAST=$FAST DEADLINE_S=$DEADLINE_S"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /' | tee -a "$LOG"

# ---- 1. build (this tree, and the baseline tar beside it)
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/device-env.sh"  # PCRE2 on a GPU image without it
base_pid=""
if [[ -z "${BASELINE_BIN:-}" && -n "${BASELINE_TAR:-}" ]]; then
  if [[ -f "$BASELINE_TAR" ]]; then
    BSRC="$WORK/baseline-src"
    rm -rf "$BSRC" && mkdir -p "$BSRC" && tar -xzf "$BASELINE_TAR" -C "$BSRC" \
      && ( cd "$BSRC" && cmake --preset gpu -DHDPISSA_MPI=OFF >"$WORK/logs/base-configure.log" 2>&1 \
           && cmake --build build/gpu -j"${JOBS_BASE:-8}" --target hdpissa-train >"$WORK/logs/base-build.log" 2>&1 ) &
    base_pid=$!
    BASELINE_BIN="$BSRC/build/gpu/examples/llama/hdpissa-train"
    : "${BASELINE_LABEL:=$(basename "$BASELINE_TAR") (built here)}"
  else
    say "throughput.sh: BASELINE_TAR=$BASELINE_TAR not found: no baseline rows"
  fi
fi
if [[ -n "${PREBUILT:-}" ]]; then
  BIN="$PREBUILT"
else
  BIN="$ROOT/build/gpu/examples/llama"
  t0=$(date +%s)
  (cd "$ROOT" && cmake --preset gpu >"$WORK/logs/configure.log" 2>&1 \
     && cmake --build build/gpu --target hdpissa-train hdpissa-eval -j"${JOBS:-16}" >"$WORK/logs/build.log" 2>&1) \
    || say "throughput.sh: build FAILED (the PEFT side still runs): $(grep -E 'error' "$WORK/logs/build.log" "$WORK/logs/configure.log" 2>/dev/null | head -3)"
  say "build: $(( $(date +%s) - t0 )) s"
fi
if [[ -n "$base_pid" ]]; then
  wait "$base_pid" && say "baseline build: ok, $(elapsed) s since start" \
    || say "baseline build FAILED: $(grep -E 'error' "$WORK/logs/base-build.log" "$WORK/logs/base-configure.log" 2>/dev/null | head -3)"
fi

# our binaries: "new" always, "baseline" when given; a binary without --device is reported, not run
TRAIN="$BIN/hdpissa-train"
NOTE_OURS=""
if [[ ! -x "$TRAIN" ]]; then
  NOTE_OURS="Our side not run: no hdpissa-train binary at $TRAIN (build failed or not built)."
elif ! { "$TRAIN" --help 2>&1 || true; } | grep -- "--device" >/dev/null; then
  NOTE_OURS="Our side not run: this hdpissa-train has no --device option (the GPU trainer is not in this tree)."
fi
BTRAIN=""
NOTE_BASE=""
if [[ -n "${BASELINE_BIN:-}" ]]; then
  BTRAIN="$BASELINE_BIN"
  [[ -d "$BTRAIN" ]] && BTRAIN="$BTRAIN/hdpissa-train"
  case "$BTRAIN" in /*) ;; *) BTRAIN="$PWD/$BTRAIN" ;; esac
  if [[ ! -x "$BTRAIN" ]]; then
    NOTE_BASE="Baseline not run: no executable hdpissa-train at $BTRAIN."
    BTRAIN=""
  fi
fi
HELP_NEW="$({ "$TRAIN" --help 2>&1 || true; } | tr '\n' ' ')"
HELP_BASE=""
[[ -n "$BTRAIN" ]] && HELP_BASE="$({ "$BTRAIN" --help 2>&1 || true; } | tr '\n' ' ')"
[[ -n "$NOTE_OURS" ]] && say "$NOTE_OURS"
[[ -n "$NOTE_BASE" ]] && say "$NOTE_BASE"
python3 - "$RUNS/meta.json" "${BASELINE_LABEL:-${BASELINE_BIN:-}}" "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)" <<'PY'
import json, sys
json.dump({"baseline_label": sys.argv[2] or None, "commit": sys.argv[3] or None}, open(sys.argv[1], "w"))
PY

# ---- 2. bf16 matmul peak (MFU), once
to=$(capped 120)
if (( to > 0 )); then
  timeout -k 10 "$to" python3 "$ROOT/bench/e2e/peft_throughput.py" --peak-only --out "$RUNS/device.jsonl" \
    >"$WORK/logs/peak.log" 2>&1
  say "peak: rc $?, $(tail -1 "$WORK/logs/peak.log")"
fi

run_ours() {  # SIDE(ours|base) BINARY HELP CFG MODEL MB GA MBDIR TIMEOUT EXTRA_ARGS
  local side=$1 bin=$2 help=$3 cfg=$4 model=$5 mb=$6 ga=$7 mbdir=$8 lim=$9 extra=${10}
  local att="" base method k lr name="$side-$cfg" to s rc wp="" wpflag=() ckflag=() fp8flag=() tune="${HDPISSA_CUDA_GEMM_TUNING_BF16:-off}"
  [[ "$cfg" == *+fp8* ]] && { cfg="${cfg//+fp8/}"; fp8flag=(--compute fp8); }  # hdpissa-K1+fp8
  [[ "$cfg" == *+tune* ]] && { cfg="${cfg//+tune/}"; tune=exact; }  # lora+tune: HDPISSA_CUDA_GEMM_TUNING_BF16=exact
  local dwug="${HDPISSA_CUDA_DWU_GEMM:-auto}"
  [[ "$cfg" == *+3xtf32* ]] && { cfg="${cfg//+3xtf32/}"; dwug=3xtf32; }  # hdpissa-K1+3xtf32: the sm_90a DWU kernel
  local fused="${HDPISSA_FUSED_ADAPTER_GRADS:-0}" hint="${HDPISSA_FP8_PRODUCER_AMAX:-1}"
  [[ "$cfg" == *+nohint* ]] && { cfg="${cfg//+nohint/}"; hint=0; }  # hdpissa-K1+nohint+fp8: the FP8 amax passes
  [[ "$cfg" == *+fused* ]] && { cfg="${cfg//+fused/}"; fused=1; }  # hdpissa-K1+fused: adapter_grads.cuh (opt-in)
  local stacked="${HDPISSA_STACKED_LINEARS:-1}"
  [[ "$cfg" == *+unstacked* ]] && { cfg="${cfg//+unstacked/}"; stacked=0; }  # lora+unstacked: per-member GEMMs
  local side="${HDPISSA_ADAPTER_STREAM:-1}"
  [[ "$cfg" == *+onestream* ]] && { cfg="${cfg//+onestream/}"; side=0; }  # hdpissa-K1+onestream
  local rows="${HDPISSA_CUDA_DWU_ROWS:-8}"
  local dstreams="${HDPISSA_CUDA_DWU_STREAMS:-1}"
  if [[ "$cfg" =~ \+streams([0-9]+) ]]; then dstreams="${BASH_REMATCH[1]}"; cfg="${cfg//+streams${dstreams}/}"; fi  # HDPISSA_CUDA_DWU_STREAMS
  local overlap="${HDPISSA_DWU_OVERLAP:-1}"
  [[ "$cfg" == *+overlap* ]] && { cfg="${cfg//+overlap/}"; overlap=1; }  # HDPISSA_DWU_OVERLAP (default)
  [[ "$cfg" == *+joined* ]] && { cfg="${cfg//+joined/}"; overlap=0; }  # the step joined before the next forward
  [[ "$cfg" == *+rows4* ]] && { cfg="${cfg//+rows4/}"; rows=4; }  # hdpissa-K1+rows4: HDPISSA_CUDA_DWU_ROWS=4
  # (empty = the trainer's default: high for the second stream since session 35, default for the DWU)
  local sprio="${HDPISSA_ADAPTER_STREAM_PRIORITY:-}" dprio="${HDPISSA_CUDA_DWU_PRIORITY:-}"
  [[ "$cfg" == *+sideprio* ]] && { cfg="${cfg//+sideprio/}"; sprio=high; }  # the second stream at high priority
  [[ "$cfg" == *+sidelow* ]] && { cfg="${cfg//+sidelow/}"; sprio=default; }  # ... at the default (lowest) priority
  [[ "$cfg" == *+dwuprio* ]] && { cfg="${cfg//+dwuprio/}"; dprio=high; }  # the DWU apply streams at high priority
  local band="${HDPISSA_FLASH_BAND:-}"
  if [[ "$cfg" =~ \+band([0-9]+|all) ]]; then band="${BASH_REMATCH[1]}"; cfg="${cfg//+band$band/}"; fi  # +band1: HDPISSA_FLASH_BAND
  local chunk="${HDPISSA_LOSS_CHUNK_ROWS:-}"
  if [[ "$cfg" =~ \+chunk([0-9]+) ]]; then chunk="${BASH_REMATCH[1]}"; cfg="${cfg//+chunk$chunk/}"; fi  # +chunk1024: HDPISSA_LOSS_CHUNK_ROWS
  # (+keep and +ckpt together pass both flags: the trainer refuses the pair, naming both)
  [[ "$cfg" == *+keep* ]] && { cfg="${cfg//+keep/}"; ckflag+=(--keep-swiglu); }  # hdpissa-K1+keep: --keep-swiglu
  [[ "$cfg" == *+graphs* ]] && { cfg="${cfg//+graphs/}"; ckflag+=(--cuda-graphs --pad-to-multiple "$SEQ"); }  # +graphs
  [[ "$cfg" == *+ckpt* ]] && { cfg="${cfg//+ckpt/}"; ckflag+=(--activation-checkpointing); }  # hdpissa-K1+ckpt
  [[ "$cfg" == *@* ]] && { wp="${cfg##*@}"; cfg="${cfg%@*}"; wpflag=(--w-precision "$wp"); }  # hdpissa-K1@bf16-sr
  [[ "$cfg" == *_* ]] && att="${cfg##*_}"   # e.g. hdpissa-K8_gemm: --attention gemm
  base="${cfg%%_*}"
  method="${base%%-K*}"; k=1; [[ "$base" == *-K* ]] && k="${base##*-K}"
  lr=2e-5; [[ "$method" == full ]] && lr=1e-5
  local attflag=()
  if [[ -n "$att" || "$help" == *--attention* ]]; then attflag=(--attention "${att:-auto}"); fi
  to=$(capped "$lim")
  if (( to == 0 )); then
    write_status "$mbdir/$name.status.json" 0 0 0 "deadline (DEADLINE_S=$DEADLINE_S)" /dev/null
    say "  $name: SKIPPED (deadline)"; return
  fi
  s=$(date +%s.%N)
  # shellcheck disable=SC2086
  HDPISSA_CUDA_GEMM_TUNING_BF16="$tune" HDPISSA_CUDA_DWU_GEMM="$dwug" HDPISSA_FUSED_ADAPTER_GRADS="$fused" HDPISSA_FP8_PRODUCER_AMAX="$hint" HDPISSA_STACKED_LINEARS="$stacked" HDPISSA_ADAPTER_STREAM="$side" HDPISSA_LOSS_CHUNK_ROWS="$chunk" HDPISSA_CUDA_DWU_ROWS="$rows" HDPISSA_CUDA_DWU_STREAMS="$dstreams" HDPISSA_DWU_OVERLAP="$overlap" HDPISSA_FLASH_BAND="$band" \
  HDPISSA_ADAPTER_STREAM_PRIORITY="$sprio" HDPISSA_CUDA_DWU_PRIORITY="$dprio" \
  timeout -k 10 "$to" "$bin" --device cuda --dtype bf16 "${attflag[@]}" --model "$model" \
    --tokenizer "$DEV/tokenizer.model" --data "$DEV/train.jsonl" --method "$method" --groups-per-process "$k" \
    --rank 16 --alpha 16 --targets q,k,v,o,gate,up,down $([[ $method == *pissa* ]] && echo --svd randomized) --micro-batch "$mb" --grad-accum "$ga" \
    --max-len "$SEQ" --max-steps "$OURS_STEPS" --lr "$lr" --warmup-ratio 0 --log-every 1 \
    --metrics "$mbdir/$name.jsonl" "${wpflag[@]}" "${ckflag[@]}" "${fp8flag[@]}" $extra >"$mbdir/$name.log" 2>&1
  rc=$?
  local wall; wall=$(python3 -c "import time; print(round(time.time() - $s, 1))")
  write_status "$mbdir/$name.status.json" "$rc" "$wall" "$to" "" "$mbdir/$name.log"
  say "  $name: rc $rc, ${wall} s; $(grep -E 'trained|error' "$mbdir/$name.log" | tail -1)"
  [[ $rc -ne 0 ]] && tail -5 "$mbdir/$name.log" | sed 's/^/    /' | tee -a "$LOG"
  snapshot
}

run_peft() {  # METHOD MODEL MB GA MBDIR TIMEOUT SHAPE
  local m=$1 model=$2 mb=$3 ga=$4 mbdir=$5 lim=$6 shape=$7 to s rc
  to=$(capped "$lim")
  if (( to == 0 )); then
    write_status "$mbdir/peft-$m.status.json" 0 0 0 "deadline (DEADLINE_S=$DEADLINE_S)" /dev/null
    say "  peft-$m: SKIPPED (deadline)"; return
  fi
  local extra=()
  [[ "${PEFT_GRAD_CKPT:-0}" == 1 ]] && extra+=(--grad-ckpt)
  s=$(date +%s.%N)
  PYTHONUNBUFFERED=1 timeout -k 10 "$to" python3 "$ROOT/bench/e2e/peft_throughput.py" --model "$model" \
    --batches "$DEV/batches.json" --methods "$m" --rank 16 --alpha 16 --micro-batch "$mb" --grad-accum "$ga" \
    --seq-len "$SEQ" --warmup "$PEFT_WARMUP" --steps "$PEFT_STEPS" --compile-mode "${PEFT_COMPILE_MODE:-default}" \
    --compile-target "${PEFT_COMPILE_TARGET:-peft}" --tag "$shape" "${extra[@]}" --out "$mbdir/peft.jsonl" \
    >"$mbdir/peft-$m.log" 2>&1
  rc=$?
  local wall; wall=$(python3 -c "import time; print(round(time.time() - $s, 1))")
  write_status "$mbdir/peft-$m.status.json" "$rc" "$wall" "$to" "" "$mbdir/peft-$m.log"
  say "  peft-$m: rc $rc, ${wall} s; $(grep -E "^peft $m:|FAILED" "$mbdir/peft-$m.log" | tail -1)"
  [[ $rc -ne 0 ]] && tail -5 "$mbdir/peft-$m.log" | sed 's/^/    /' | tee -a "$LOG"
  snapshot
}

# ---- 3./4. per shape, per micro-batch
for shape in $SHAPES; do
  case "$shape" in
    tinyllama) layers="${LAYERS_TINY:-22}"; model="${MODEL_DIR:-$WORK/tinyllama}"
               [[ "$layers" != 22 && -z "${MODEL_DIR:-}" ]] && model="$WORK/tinyllama-L$layers" ;;
    llama2-7b) layers="${LAYERS_7B:-32}"; model="${MODEL_DIR_7B:-$WORK/llama2-7b-L$layers}" ;;
    *) say "throughput.sh: unknown shape '$shape' (expected tinyllama or llama2-7b): skipped"; continue ;;
  esac
  sdir="$RUNS/$shape"
  mkdir -p "$sdir"
  if [[ ! -f "$model/config.json" ]]; then
    to=$(capped 400)
    if (( to == 0 )); then say "$shape: model not made (deadline)"; continue; fi
    t0=$(date +%s)
    timeout -k 10 "$to" python3 "$ROOT/bench/e2e/make_model.py" "$model" --preset "$shape" --layers "$layers" --seed 0 \
      >"$WORK/logs/make-model-$shape.log" 2>&1
    rc=$?
    say "$shape: make_model rc $rc, $(( $(date +%s) - t0 )) s: $(tail -1 "$WORK/logs/make-model-$shape.log")"
    [[ $rc -ne 0 || ! -f "$model/config.json" ]] && { say "$shape: no model: skipped"; continue; }
  else
    say "$shape: model $model exists (not remade)"
  fi
  cp "$model/config.json" "$sdir/config.json"
  if [[ -f "$model/shape.json" ]]; then cp "$model/shape.json" "$sdir/shape.json"
  else  # a model made by an older make_model.py (no shape.json)
    pl=22; [[ "$shape" == llama2-7b ]] && pl=32
    echo "{\"preset\": \"$shape\", \"preset_layers\": $pl}" >"$sdir/shape.json"
  fi
  layers="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["num_hidden_layers"])' "$model/config.json" 2>/dev/null || echo "$layers")"
  ours_cfgs="$(shape_val OURS_CONFIGS "$shape" "lora pissa hdpissa-K1 hdpissa-K8 full" "lora hdpissa-K1 hdpissa-K8")"
  base_cfgs="$(shape_val BASELINE_CONFIGS "$shape" "lora hdpissa-K8" "lora hdpissa-K8")"
  peft_methods="$(shape_val PEFT_METHODS "$shape" "lora-bf16,lora-compile,lora-bf16-compile" "lora-bf16,lora-bf16-compile")"
  ours_to="${OURS_TIMEOUT:-150}"; peft_to="${PEFT_TIMEOUT:-240}"
  [[ "$shape" == llama2-7b ]] && { ours_to="${OURS_TIMEOUT_7B:-360}"; peft_to="${PEFT_TIMEOUT_7B:-420}"; }
  for entry in $MICRO_BATCHES; do
    mb="${entry%%:*}"
    if [[ "$entry" == *:* ]]; then ga="${entry#*:}"
    else
      if (( TOKENS_PER_STEP % (mb * SEQ) != 0 )); then
        say "$shape mb $mb: TOKENS_PER_STEP=$TOKENS_PER_STEP is not a multiple of $mb x $SEQ: skipped"; continue
      fi
      ga=$(( TOKENS_PER_STEP / (mb * SEQ) ))
    fi
    mbdir="$sdir/mb$mb"
    [[ "$entry" == *:* ]] && mbdir="$sdir/mb$mb-ga$ga"   # an explicit grad-accum: its own table
    mkdir -p "$mbdir"
    echo "{\"micro_batch\": $mb, \"grad_accum\": $ga, \"seq_len\": $SEQ}" >"$mbdir/run.json"
    say "== $shape ($layers layers), micro-batch $mb x $SEQ, grad-accum $ga ($(elapsed) s since start)"
    if [[ -z "$NOTE_OURS" ]]; then
      for cfg in $ours_cfgs; do
        run_ours ours "$TRAIN" "$HELP_NEW" "$cfg" "$model" "$mb" "$ga" "$mbdir" "$ours_to" "${OURS_ARGS:-}"
      done
    fi
    if [[ -n "$BTRAIN" ]]; then
      for cfg in $base_cfgs; do
        run_ours base "$BTRAIN" "$HELP_BASE" "$cfg" "$model" "$mb" "$ga" "$mbdir" "$ours_to" "${BASELINE_ARGS:-}"
      done
    fi
    for m in ${peft_methods//,/ }; do
      run_peft "$m" "$model" "$mb" "$ga" "$mbdir" "$peft_to" "$shape"
    done
  done
done

# ---- 5. summary (printed last)
say "total $(elapsed) s"
say ""
snapshot final
exit 0
