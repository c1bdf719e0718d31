#!/usr/bin/env bash
# Small-scale reproduction of HD-PiSSA's rank and loss claims (issue 6; results: docs/results.md).
#
# Fine-tunes the real pretrained stories260K (HF layout) on GSM8K train with the same data, the
# same number of steps, the same global batch and the same per-group rank r for
#   full, lora, pissa (data-parallel over K = 8 groups), hdpissa with K = 2, 4, 8 (virtual groups),
#   lora-dwu and pissa-dwu (K = 8, the paper's ablations),
# then measures ΔW = W_final − W_init of every target layer with hdpissa-rank-analysis, and runs the
# mute-scalar sweep (the paper's literal x(W + γαBA)ᵀ forward, γ = 1e-2 … 1e-32, vs the exact mute).
#
#   scripts/reproduce.sh                      # defaults below, ≈ 14 min on 2 shared CPU cores
#   STEPS=20 EVAL_N=16 scripts/reproduce.sh   # quick smoke run
#
# Environment (defaults): HDPISSA_DATA (../shared/data), BUILD (build-rank), OUT (runs/reproduce),
# STEPS (150), RANK (4), LR (1e-3), MAX_LEN (256), GLOBAL (8 sequences per step), EVAL_N (64 held-out
# examples of GSM8K test), JOBS (2 runs at a time), GAMMA_K (8: K of the γ sweep), GAMMAS, SEED (42),
# ONLY (space-separated run names to run, e.g. "lora hdpissa-K8"), EXTRA_ARGS (appended to every
# hdpissa-train command, e.g. "--aggregation mean"), SKIP_BUILD.
# Every run is one-process, fp32, CPU: K virtual groups time-multiplexed by VirtualRanks, which is
# bit-identical to K real workers (docs/design.md).
#
# Larger shapes / GPU: the CUDA backend and the NCCL communicator exist in the library
# (include/hdpissa/backend/cuda, comm/nccl_communicator.hpp, bench/micro/bench_cuda_e2e.cu), but
# the LLaMA trainer (hdpissa-train) has no GPU path yet: it is CPU fp32 only (--dtype fp32). Until
# it has one, larger shapes run with this same script on a bigger CPU box (MODEL=… a larger HF
# LLaMA checkpoint, RANK=16, MAX_LEN=512, GLOBAL=128, STEPS as the budget allows; under mpirun the
# trainer spreads the K groups over processes, see docs/distributed.md), and GPU throughput at
# real shapes is measured on random weights by bench/micro/bench_cuda_e2e. The rank analysis itself
# is shape-agnostic (a 4096×11008 layer is one double-precision SVD, ~1 min on one core).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DATA=${HDPISSA_DATA:-$ROOT/../shared/data}
BUILD=${BUILD:-$ROOT/build-rank}
OUT=${OUT:-$ROOT/runs/reproduce}
MODEL=${MODEL:-$DATA/stories260K-hf}
TRAIN_DATA=${TRAIN_DATA:-$DATA/gsm8k/train.jsonl}
EVAL_DATA=${EVAL_DATA:-$DATA/gsm8k/test.jsonl}
STEPS=${STEPS:-150}
RANK=${RANK:-4}
LR=${LR:-1e-3}
MAX_LEN=${MAX_LEN:-256}
GLOBAL=${GLOBAL:-8}
EVAL_N=${EVAL_N:-64}
JOBS=${JOBS:-2}
GAMMA_K=${GAMMA_K:-8}
GAMMAS=${GAMMAS:-"1e-2 1e-4 1e-8 1e-16 1e-32"}
SEED=${SEED:-42}
PY=${PY:-/usr/bin/python3}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # JOBS runs side by side, one thread each

TRAIN=$BUILD/examples/llama/hdpissa-train
RANKTOOL=$BUILD/bench/rank_analysis/hdpissa-rank-analysis
if [[ -z "${SKIP_BUILD:-}" ]]; then
  [[ -f $BUILD/CMakeCache.txt ]] || cmake -S "$ROOT" -B "$BUILD" -DHDPISSA_CUDA=OFF -DHDPISSA_MPI=OFF -DCMAKE_BUILD_TYPE=Release
  cmake --build "$BUILD" --target hdpissa-train hdpissa-rank-analysis -j2
fi
for f in "$TRAIN" "$RANKTOOL" "$MODEL/model.safetensors" "$TRAIN_DATA" "$EVAL_DATA"; do
  [[ -e $f ]] || { echo "reproduce.sh: expected $f, not found" >&2; exit 1; }
done
mkdir -p "$OUT"

# name method K gamma: one run = train + rank analysis of its ΔW. Same global batch for every K:
# grad-accum = GLOBAL / K micro-batches of one sequence per group and step.
run() {
  local name=$1 method=$2 K=$3 gamma=${4:-0}
  local dir=$OUT/$name accum=$((GLOBAL / K))
  if [[ -n "${ONLY:-}" && ! " $ONLY " =~ " $name " ]]; then return 0; fi
  mkdir -p "$dir"
  local args=(--model "$MODEL" --data "$TRAIN_DATA" --method "$method" --groups-per-process "$K"
              --rank "$RANK" --lr "$LR" --max-steps "$STEPS" --grad-accum "$accum" --micro-batch 1
              --max-len "$MAX_LEN" --seed "$SEED" --eval-data "$EVAL_DATA" --eval-examples "$EVAL_N"
              --metrics "$dir/metrics.jsonl" --output "$dir/model" --log-every 10)
  [[ $gamma != 0 ]] && args+=(--mute-gamma "$gamma")
  # shellcheck disable=SC2206  # EXTRA_ARGS is split on purpose
  [[ -n "${EXTRA_ARGS:-}" ]] && args+=($EXTRA_ARGS)
  printf '{"name": "%s", "method": "%s", "K": %d, "rank": %d, "gamma": %s, "steps": %d, "lr": %s, "max_len": %d, "global_batch": %d, "grad_accum": %d, "extra_args": "%s"}\n' \
    "$name" "$method" "$K" "$RANK" "$gamma" "$STEPS" "$LR" "$MAX_LEN" "$GLOBAL" "$accum" "${EXTRA_ARGS:-}" > "$dir/run.json"
  echo "$TRAIN ${args[*]}" > "$dir/command.txt"
  local t0=$SECONDS
  if ! "$TRAIN" "${args[@]}" > "$dir/train.log" 2>&1; then
    echo "[$name] hdpissa-train failed (see $dir/train.log):" >&2
    tail -5 "$dir/train.log" >&2
    return 1
  fi
  "$RANKTOOL" --init "$MODEL" --final "$dir/model" --label "$name" --csv "$dir/rank.csv" --json "$dir/rank.json" \
    > "$dir/rank.txt"
  echo "[$name] done in $((SECONDS - t0)) s: $(grep -m1 'eval loss (after' "$dir/train.log" || true)"
}

# Run the jobs JOBS at a time; a failed run is reported and the rest go on.
pids=()
launch() {
  run "$@" &
  pids+=($!)
  if ((${#pids[@]} >= JOBS)); then wait "${pids[0]}" || true; pids=("${pids[@]:1}"); fi
}

echo "reproduce.sh: $STEPS steps, r = $RANK, lr = $LR, max_len = $MAX_LEN, $GLOBAL sequences per step, out $OUT"
T0=$SECONDS
launch full full 8
launch lora lora 8
launch pissa pissa 8
launch hdpissa-K2 hdpissa 2
launch hdpissa-K4 hdpissa 4
launch hdpissa-K8 hdpissa 8
launch lora-dwu lora-dwu 8
launch pissa-dwu pissa-dwu 8
for g in $GAMMAS; do launch "gamma-$g" hdpissa "$GAMMA_K" "$g"; done
for p in "${pids[@]}"; do wait "$p" || true; done

# γ sweep: ‖W_γ − W_exact‖ per layer (the rank tool's ΔW between the two final checkpoints).
for g in $GAMMAS; do
  d=$OUT/gamma-$g
  [[ -d $d/model && -d $OUT/hdpissa-K$GAMMA_K/model ]] || continue
  "$RANKTOOL" --init "$OUT/hdpissa-K$GAMMA_K/model" --final "$d/model" --label "gamma-$g" \
    --csv "$d/diff_vs_exact.csv" > "$d/diff_vs_exact.txt"
done

# Share of each ΔW outside the first-order subspace {X V_Nᵀ + U_N Y} of W₀ for N = r, 2r, 4r, 8r
# (N = Kr is HD-PiSSA's; N = r PiSSA's), capped at 32 = the k/v layers' min(out, in).
subspace() {
  local dir=$1 N=$2
  [[ -d $dir/model ]] || return 0
  "$RANKTOOL" --init "$MODEL" --final "$dir/model" --subspace-rank "$N" --csv "$dir/subspace-N$N.csv" \
    > "$dir/subspace-N$N.txt"
}
for name in full lora pissa hdpissa-K2 hdpissa-K4 hdpissa-K8 lora-dwu pissa-dwu; do
  for m in 1 2 4 8; do
    ((m * RANK <= 32)) && subspace "$OUT/$name" $((m * RANK))
  done
done

"$PY" "$ROOT/bench/rank_analysis/summarize_reproduction.py" --out "$OUT" --rank "$RANK" --gamma-k "$GAMMA_K"
echo "reproduce.sh: finished in $((SECONDS - T0)) s; summary in $OUT/summary.md"
