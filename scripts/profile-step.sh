#!/usr/bin/env bash
# profile-step.sh — where a training step's time goes (issue 20: "keep the profile table current,
# sections per step, bare model vs trainer"): the bare model (bench_llama_cuda: frozen plain hooks,
# forward + backward, dX through every linear — the work every adapter method does besides its
# adapter GEMMs) and `hdpissa-train --profile` for each of CONFIGS, at one shape and micro-batch,
# in one table of GPU ms per micro-batch (the optimizer step per step; GA micro-batches a step).
#
# Usage (repository root, on the GPU machine; carry .devbin and .devdata/throughput):
#   source scripts/prebuilt-env.sh; OUT=$OUT/prof PREBUILT=$PWD/.devbin scripts/profile-step.sh
# Env: PREBUILT (dir with hdpissa-train and bench_llama_cuda) or BIN [build/gpu] (examples/llama/
#   hdpissa-train, bench/micro/bench_llama_cuda), SHAPE [llama2-7b | tinyllama], MB [8], SEQ [512],
#   GA [1], STEPS [5] (trainer steps; the first is dropped), CONFIGS ["lora hdpissa-K1"] (method[-K<n>],
#   as in throughput.sh), EXTRA (more hdpissa-train flags), WORK [/tmp/hdpissa-throughput] (the model,
#   made by bench/e2e/make_model.py unless WORK/<shape>/config.json exists: the throughput.sh place),
#   THROUGHPUT_DATA [.devdata/throughput], OUT [build/gpu/profile], BARE_ARGS (more bench_llama_cuda flags,
#   e.g. "--prompt-fraction 0.2": the loss over the rows the trainer's data has as targets).
# Output: OUT/profile.md (the table), OUT/bare.log, OUT/<config>.log / .jsonl.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHAPE=${SHAPE:-llama2-7b} MB=${MB:-8} SEQ=${SEQ:-512} GA=${GA:-1} STEPS=${STEPS:-5}
CONFIGS=${CONFIGS:-"lora hdpissa-K1"}
WORK=${WORK:-/tmp/hdpissa-throughput}
OUT=${OUT:-$ROOT/build/gpu/profile}
DEV=${THROUGHPUT_DATA:-$ROOT/.devdata/throughput}
if [[ -n "${PREBUILT:-}" ]]; then T="$PREBUILT/hdpissa-train"; B="$PREBUILT/bench_llama_cuda"
else T="${BIN:-$ROOT/build/gpu}/examples/llama/hdpissa-train"; B="${BIN:-$ROOT/build/gpu}/bench/micro/bench_llama_cuda"; fi
for x in "$T" "$B"; do [[ -x "$x" ]] || { echo "profile-step: expected an executable $x (set PREBUILT or BIN)" >&2; exit 2; }; done
case "$SHAPE" in tinyllama|llama2-7b) ;; *) echo "profile-step: SHAPE: expected tinyllama or llama2-7b, found '$SHAPE'" >&2; exit 2 ;; esac
for f in train.jsonl tokenizer.model; do
  [[ -f "$DEV/$f" ]] || { echo "profile-step: expected $DEV/$f (scripts/throughput.sh prepare; carry .devdata/throughput)" >&2; exit 2; }
done
mkdir -p "$OUT" "$WORK"
MODEL="$WORK/$SHAPE"
[[ "$SHAPE" == llama2-7b ]] && MODEL="$WORK/llama2-7b-L32"  # throughput.sh's name for the full 7B
if [[ ! -f "$MODEL/config.json" ]]; then
  python3 "$ROOT/bench/e2e/make_model.py" "$MODEL" --preset "$SHAPE" --seed 0 >"$OUT/make_model.log" 2>&1 ||
    { echo "profile-step: make_model.py failed:"; tail -5 "$OUT/make_model.log"; exit 1; }
fi
echo "[profile-step] bare model: $B --shape $SHAPE --batch $MB --seq $SEQ"
# shellcheck disable=SC2086
"$B" --shape "$SHAPE" --batch "$MB" --seq "$SEQ" --steps 10 --warmup 3 ${BARE_ARGS:-} >"$OUT/bare.log" 2>&1 ||
  { echo "  bench_llama_cuda failed:"; tail -5 "$OUT/bare.log"; }
for cfg in $CONFIGS; do
  method="${cfg%%-K*}"; k=1; [[ "$cfg" == *-K* ]] && k="${cfg##*-K}"
  echo "[profile-step] hdpissa-train --profile: $cfg"
  # shellcheck disable=SC2086
  "$T" --device cuda --dtype bf16 --model "$MODEL" --tokenizer "$DEV/tokenizer.model" --data "$DEV/train.jsonl" \
    --method "$method" --groups-per-process "$k" --rank 16 --alpha 16 --targets q,k,v,o,gate,up,down $([[ $method == *pissa* ]] && echo --svd randomized) \
    --micro-batch "$MB" --grad-accum "$GA" --max-len "$SEQ" --max-steps "$STEPS" --lr 2e-5 --warmup-ratio 0 \
    --log-every 1 --profile --metrics "$OUT/$cfg.jsonl" ${EXTRA:-} >"$OUT/$cfg.log" 2>&1 ||
    { echo "  failed (rc $?):"; tail -5 "$OUT/$cfg.log"; }
done
python3 - "$OUT" "$GA" "$SHAPE" "$MB" "$SEQ" $CONFIGS <<'PY' | tee "$OUT/profile.md"
import json, re, sys, pathlib
out, ga, shape, mb, seq, configs = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6:]
row = re.compile(r"^\s+(\S.*?)\s+([0-9.]+) ms\s+([0-9.]+) %")
bare, bare_step = {}, None
text = (out / "bare.log").read_text(errors="replace") if (out / "bare.log").exists() else ""
after = False
for line in text.splitlines():
    if line.startswith("profiled step"):
        after = True
        m = re.search(r"([0-9.]+) ms", line)
        bare_step = float(m.group(1)) if m else None
        continue
    m = row.match(line) if after else None
    if m:
        bare[m.group(1)] = float(m.group(2))
cols = {}
for c in configs:
    f = out / f"{c}.jsonl"
    recs = [json.loads(l) for l in open(f) if l.strip()] if f.exists() else []
    s = next((r for r in recs if r.get("type") == "summary"), None)
    cols[c] = s.get("profile") if s else None
names = list(bare) or ["linears fwd", "attention fwd", "norms+elementwise fwd", "loss (lm_head + CE)", "linears bwd",
                       "attention bwd", "norms+elementwise bwd"]
print(f"{shape}, micro-batch {mb} x {seq}, grad-accum {ga}: GPU ms per micro-batch (CUDA events; the optimizer step "
      f"and the rest per step)\n")
print("| section | bare model | " + " | ".join(configs) + " |")
print("|---|---|" + "---|" * len(configs))
def cell(p, name, per_mb=True):
    if not p or name not in p.get("sections_ms", {}):
        return "—"
    v = p["sections_ms"][name] / (ga if per_mb else 1)
    return f"{v:.2f}"
for n in names:
    print(f"| {n} | {bare.get(n, float('nan')):.2f} | " + " | ".join(cell(cols[c], n) for c in configs) + " |")
print("| optimizer step (per step) | — | " + " | ".join(cell(cols[c], "optimizer step (update, collectives)", False) for c in configs) + " |")
print("| rest (per step: host, waits, read-backs) | — | " + " | ".join(f"{cols[c]['rest_ms']:.2f}" if cols[c] and "rest_ms" in cols[c] else "—" for c in configs) + " |")
print(f"| **step** | {bare_step if bare_step is not None else float('nan'):.2f} (profiled pass) | " + " | ".join(f"{cols[c]['step_ms']:.2f}" if cols[c] and "step_ms" in cols[c] else "—" for c in configs) + " |")
# the loss row in its parts (bench: "    loss: ... ms  (part of the loss row)"; trainer: loss_parts_ms per step)
part = re.compile(r"^\s+(loss: .*?)\s+([0-9.]+) ms\s+\(part")
bare_parts = {m.group(1): float(m.group(2)) for m in map(part.match, text.splitlines()) if m}
part_names = list(bare_parts) or sorted({n for c in configs if cols[c] for n in cols[c].get("loss_parts_ms", {})})
for n in part_names:
    vals = [f"{cols[c]['loss_parts_ms'][n] / ga:.2f}" if cols[c] and n in cols[c].get("loss_parts_ms", {}) else "—"
            for c in configs]
    print(f"| ({n}) | {bare_parts.get(n, float('nan')):.2f} | " + " | ".join(vals) + " |")
PY
