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
# hdpissa-train command, e.g. "--aggregation mean"), SKIP_BUILD, RANK_THREADS (threads of each rank
# analysis that runs beside training: nproc / JOBS; the subspace analyses after training use nproc).
# Every run is one-process, fp32, CPU: K virtual groups time-multiplexed by VirtualRanks, which is
# bit-identical to K real workers (docs/design.md).
#
# Larger shapes / GPU: DEVICE=cuda runs every hdpissa-train on the GPU (--device cuda --dtype
# $DTYPE, default fp32 so that the rank analysis sees fp32 updates; K virtual groups share the GPU),
# builds with CUDA, and with SHAPE=large fine-tunes a randomly initialised 512-wide LLaMA (8 layers,
# GQA 8/4, MLP 1408, the LLaMA-2 tokenizer's 32000 pieces; scripts/make-random-llama.py) at
# RANK=16, MAX_LEN=512: no larger pretrained checkpoint exists here, so its loss numbers are those
# of a random-init model (the rank claims do not depend on pretraining; PiSSA's principal
# directions of a random matrix carry no pretrained knowledge, so the loss ordering is not a test
# of the paper there). MODEL=… any HF LLaMA checkpoint works the same way.
#   DEVICE=cuda SHAPE=large scripts/reproduce.sh     # on a GPU machine (scripts/gpu-check.sh does it)
# Under mpirun the trainer spreads the K groups over processes (docs/distributed.md). The rank
# analysis itself is shape-agnostic (a 4096×11008 layer is one double-precision SVD, ~1 min on one core).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DATA=${HDPISSA_DATA:-$ROOT/../shared/data}
BUILD=${BUILD:-$ROOT/build-rank$([[ ${DEVICE:-cpu} == cuda ]] && echo -cuda)}
OUT=${OUT:-$ROOT/runs/reproduce}
DEVICE=${DEVICE:-cpu}
DTYPE=${DTYPE:-fp32}
SHAPE=${SHAPE:-small}
if [[ $SHAPE == large ]]; then
  MODEL=${MODEL:-$OUT/model-random-512}
  RANK=${RANK:-16}
  MAX_LEN=${MAX_LEN:-512}
  GLOBAL=${GLOBAL:-32}
  STEPS=${STEPS:-100}
  LR=${LR:-5e-4}
else
  MODEL=${MODEL:-$DATA/stories260K-hf}
fi
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
NPROC=$(nproc)
RANK_THREADS=${RANK_THREADS:-$(( NPROC / JOBS > 0 ? NPROC / JOBS : 1 ))}

TRAIN=$BUILD/examples/llama/hdpissa-train
RANKTOOL=$BUILD/bench/rank_analysis/hdpissa-rank-analysis
if [[ -z "${SKIP_BUILD:-}" ]]; then
  cuda_flag=OFF
  [[ $DEVICE == cuda ]] && cuda_flag=ON
  [[ -f $BUILD/CMakeCache.txt ]] || cmake -S "$ROOT" -B "$BUILD" -DHDPISSA_CUDA=$cuda_flag -DHDPISSA_MPI=OFF \
    -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a >/dev/null
  cmake --build "$BUILD" --target hdpissa-train hdpissa-rank-analysis -j"$(nproc)"
fi
if [[ $SHAPE == large && ! -f $MODEL/model.safetensors ]]; then
  "$PY" "$ROOT/scripts/make-random-llama.py" --out "$MODEL" --hidden 512 --layers 8 --heads 8 --kv-heads 4 \
    --intermediate 1408 --vocab 32000 --max-pos 1024 --tie 0 --seed "$SEED" \
    --tokenizer "${TOKENIZER:-$DATA/llama2_tokenizer/tokenizer.model}"
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
  [[ $DEVICE != cpu ]] && args+=(--device "$DEVICE" --dtype "$DTYPE")
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
    --threads "$RANK_THREADS" > "$dir/rank.txt"
  echo "[$name] done in $((SECONDS - t0)) s: $(grep -m1 'eval loss (after' "$dir/train.log" || true)"
}

# Run the jobs JOBS at a time; a failed run is reported and the rest go on.
pids=()
launch() {
  run "$@" &
  pids+=($!)
  if ((${#pids[@]} >= JOBS)); then wait "${pids[0]}" || true; pids=("${pids[@]:1}"); fi
}

echo "reproduce.sh: $DEVICE ($SHAPE shapes, $MODEL), $STEPS steps, r = $RANK, lr = $LR, max_len = $MAX_LEN, $GLOBAL sequences per step, out $OUT"
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
    --csv "$d/diff_vs_exact.csv" --threads "$NPROC" > "$d/diff_vs_exact.txt"
done

# Share of each ΔW outside the first-order subspace {X V_Nᵀ + U_N Y} of W₀ for N = r, 2r, 4r, 8r
# (N = Kr is HD-PiSSA's; N = r PiSSA's), capped at the smallest min(out, in) of the targets (the
# k/v layers': n_kv_heads · head_dim; 32 for stories260K).
CAP=$("$PY" -c "import json,sys; c=json.load(open(sys.argv[1])); h=c['hidden_size']; n=c['num_attention_heads']; print(min(h, c.get('num_key_value_heads', n) * c.get('head_dim', h // n)))" "$MODEL/config.json")
subspace() {
  local dir=$1 N=$2
  [[ -d $dir/model ]] || return 0
  "$RANKTOOL" --init "$MODEL" --final "$dir/model" --subspace-rank "$N" --csv "$dir/subspace-N$N.csv" \
    --threads "$NPROC" > "$dir/subspace-N$N.txt"
}
for name in full lora pissa hdpissa-K2 hdpissa-K4 hdpissa-K8 lora-dwu pissa-dwu; do
  for m in 1 2 4 8; do
    ((m * RANK <= CAP)) && subspace "$OUT/$name" $((m * RANK))
  done
done

"$PY" "$ROOT/bench/rank_analysis/summarize_reproduction.py" --out "$OUT" --rank "$RANK" --gamma-k "$GAMMA_K"
echo "reproduce.sh: finished in $((SECONDS - T0)) s; summary in $OUT/summary.md"
