#!/usr/bin/env bash
# --compute fp8 against bf16 (issue 20 item 3; docs/trainer.md, "FP8 compute"): per method, the same
# hdpissa-train run twice (--dtype bf16, then + --compute fp8), then tokens/s, the per-step loss
# deviation and the relative ΔW deviation ‖ΔW_fp8 − ΔW_bf16‖_F / ‖ΔW_bf16‖_F over every target
# linear (ΔW = merged output − base model, from the two --output checkpoints; needs numpy).
# Usage (repository root, on the GPU machine):
#   BIN=build/gpu MODEL=DIR DATA=train.jsonl [TOKENIZER=tokenizer.model] scripts/fp8-deviation.sh
#   METHODS ["hdpissa lora"]  STEPS [300]  MB [8]  SEQ [512]  GA [1]  K [1] (--groups-per-process)
#   EXTRA (more hdpissa-train flags)  OUT [runs/fp8-deviation]
# Output: OUT/fp8-deviation.md (one row per method) and every run's log / metrics / merged model.
set -uo pipefail
BIN=${BIN:-build/gpu}
: "${MODEL:?set MODEL (an HF LLaMA checkpoint directory)}" "${DATA:?set DATA (a JSONL training file)}"
METHODS=${METHODS:-"hdpissa lora"}
STEPS=${STEPS:-300} MB=${MB:-8} SEQ=${SEQ:-512} GA=${GA:-1} K=${K:-1}
OUT=${OUT:-runs/fp8-deviation}
T="$BIN/examples/llama/hdpissa-train"
[[ -x "$T" ]] || { echo "fp8-deviation: expected a built hdpissa-train at $T (set BIN)" >&2; exit 2; }
mkdir -p "$OUT"
tok=(); [[ -n "${TOKENIZER:-}" ]] && tok=(--tokenizer "$TOKENIZER")
for m in $METHODS; do
  for c in bf16 fp8; do
    fl=(); [[ $c == fp8 ]] && fl=(--compute fp8)
    echo "fp8-deviation: $m $c"
    # shellcheck disable=SC2086
    "$T" --device cuda --dtype bf16 "${fl[@]}" --model "$MODEL" "${tok[@]}" --data "$DATA" --method "$m" \
      --groups-per-process "$K" --rank 16 --alpha 16 $([[ $m == *pissa* ]] && echo --svd randomized) --micro-batch "$MB" --grad-accum "$GA" \
      --max-len "$SEQ" --max-steps "$STEPS" --lr 2e-5 --log-every 10 --seed 1 --metrics "$OUT/$m-$c.jsonl" \
      --output "$OUT/$m-$c-out" --output-dtype f32 ${EXTRA:-} >"$OUT/$m-$c.log" 2>&1 ||
      { echo "  FAILED (rc $?): tail of $OUT/$m-$c.log"; tail -5 "$OUT/$m-$c.log"; }
  done
done
python3 - "$OUT" "$MODEL" $METHODS <<'PY'
import json, mmap, struct, sys, pathlib
import numpy as np
out, model, methods = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3:]
def index(d):  # target-linear name -> (mmap, dtype, offset, bytes), every shard, nothing loaded
    res = {}
    for f in sorted(pathlib.Path(d).glob("*.safetensors")):
        fh = open(f, "rb"); mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        n = struct.unpack("<Q", mm[:8])[0]; h = json.loads(mm[8:8 + n]); base = 8 + n
        for k, v in h.items():
            if k != "__metadata__" and k.endswith("_proj.weight") and (".mlp." in k or ".self_attn." in k):
                s, e = v["data_offsets"]; res[k] = (mm, v["dtype"], base + s, e - s)
    return res
def load(t):  # one tensor as float64
    mm, dt, off, nb = t
    if dt == "BF16":
        return (np.frombuffer(mm, np.uint16, nb // 2, off).astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return np.frombuffer(mm, {"F32": np.float32, "F16": np.float16}[dt], nb // {"F32": 4, "F16": 2}[dt], off).astype(np.float64)
def steps(f):
    r = [json.loads(l) for l in open(f) if l.strip()]
    return [j for j in r if j.get("type") == "step"], [j for j in r if j.get("type") == "summary"]
w0 = index(model)
rows = ["| method | tok/s bf16 | tok/s fp8 | ratio | max rel loss diff | mean rel loss diff | final loss bf16 / fp8 | rel dW diff |",
        "|---|---|---|---|---|---|---|---|"]
for m in methods:
    try:
        sb, ub = steps(out / f"{m}-bf16.jsonl"); sf, uf = steps(out / f"{m}-fp8.jsonl")
        lb = {j["step"]: j["loss"] for j in sb}; lf = {j["step"]: j["loss"] for j in sf}
        common = sorted(set(lb) & set(lf)); rel = [abs(lf[s] - lb[s]) / abs(lb[s]) for s in common]
        tb = ub[-1]["tokens_per_s"] if ub else float("nan"); tf = uf[-1]["tokens_per_s"] if uf else float("nan")
        wb, wf = index(out / f"{m}-bf16-out"), index(out / f"{m}-fp8-out")
        num = den = 0.0
        for k in wb:
            base = load(w0[k]); db = load(wb[k]) - base; df = load(wf[k]) - base
            num += float((df - db) @ (df - db)); den += float(db @ db)
        rows.append(f"| {m} | {tb:.0f} | {tf:.0f} | {tf / tb:.3f} | {max(rel):.3g} | {sum(rel) / len(rel):.3g} | "
                    f"{lb[common[-1]]:.4f} / {lf[common[-1]]:.4f} | {(num / den) ** 0.5 if den > 0 else float('nan'):.3g} |")
    except Exception as e:  # a failed run: say which, keep the others
        rows.append(f"| {m} | failed: {e!r} | | | | | | |")
text = "\n".join(rows) + "\n"
(out / "fp8-deviation.md").write_text(text)
print(text)
PY
