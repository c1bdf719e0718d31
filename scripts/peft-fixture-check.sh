#!/usr/bin/env bash
# peft-fixture-check.sh — CI's CPU replay of the GPU machine's PEFT check (scripts/gpu-peft-check.sh):
# the same three stories260K runs (lora, pissa, hdpissa with a full-rank --export-lora-rank; 20 steps,
# --threads 1, deterministic), our merged model's held-out loss on the same 32 GSM8K-test examples,
# compared with the loss PEFT 0.21 computed for base + our adapter on the GPU machine, recorded in
# tests/llama/fixtures/peft/peft_losses.jsonl (label, loss_peft, n_tokens). Passes when every label's
# |ours - PEFT| <= 1e-4 relative and the target-token counts are equal: our adapter export and our
# merge still mean what PEFT reads from them. Then two truncated exports (hdpissa --export-lora-rank 4,
# lora-dwu --export-lora-energy 0.9): each layer's chosen rank and kept share of |dW|^2 against torch's
# float64 SVD of the same runs (tests/llama/fixtures/peft/truncated_exports.json, |diff| <= 1e-4).
# Usage: scripts/peft-fixture-check.sh BUILD_DIR [DATA]      (exit 0 pass, 1 mismatch, 2 bad input)
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
B=${1:?usage: peft-fixture-check.sh BUILD_DIR [DATA]}
D=${2:-${HDPISSA_DATA:-$ROOT/../shared/data}}
FIX="$ROOT/tests/llama/fixtures/peft/peft_losses.jsonl"
G="$B/examples/llama"
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
for f in "$FIX" "$D/stories260K-hf/model.safetensors" "$D/gsm8k/train.jsonl" "$D/gsm8k/test.jsonl" "$G/hdpissa-train" "$G/hdpissa-eval"; do
  [[ -e "$f" ]] || { echo "peft-fixture-check: expected $f, not found" >&2; exit 2; }
done
train() {  # NAME ARGS... — exactly gpu-peft-check.sh's runs
  local n=$1; shift
  "$G/hdpissa-train" --model "$D/stories260K-hf" --data "$D/gsm8k/train.jsonl" --rank 4 --lr 2e-3 --max-len 256 \
    --max-steps 20 --threads 1 --quiet --output "$W/$n" "$@" > "$W/$n.log" 2>&1 || { tail -5 "$W/$n.log"; exit 1; }
  "$G/hdpissa-eval" --model "$W/$n" --tokenizer "$D/stories260K-hf/tokenizer.model" --data "$D/gsm8k/test.jsonl" \
    --max-len 256 --eval-examples 32 --micro-batch 4 --threads 1 --json "$W/$n.json" > /dev/null || exit 1
}
train peft-lora --method lora --alpha 8
train peft-pissa --method pissa --alpha 8
train peft-hd --method hdpissa --groups-per-process 4 --export-lora-rank 172
# the truncated exports (R < full): per-layer rank and kept share of |dW|^2 vs torch's float64 SVD,
# recorded in tests/llama/fixtures/peft/truncated_exports.json
train peft-hd-r4 --method hdpissa --groups-per-process 4 --export-lora-rank 4
train peft-dwu-e90 --method lora-dwu --export-lora-energy 0.9
python3 - "$ROOT/tests/llama/fixtures/peft/truncated_exports.json" "$W" <<'PY' || exit 1
import json, sys
fix = json.load(open(sys.argv[1]))
bad = 0
for label, r in fix["runs"].items():
    ours = {l["name"]: l for l in json.load(open(f"{sys.argv[2]}/{r['run']}/adapter/lora_export.json"))["layers"]}
    worst = 0.0
    for ref in r["layers"]:
        o = ours.get(ref["layer"])
        if o is None or o["rank"] != ref["rank"]:
            print(f"peft-fixture-check: {label}: {ref['layer']}: rank {o and o['rank']}, torch reference {ref['rank']}"); bad += 1; continue
        worst = max(worst, abs(o["kept_share"] - ref["kept_share_ref"]))
    ok = worst <= 1e-4 and len(ours) == len(r["layers"])
    bad += not ok
    print(f"peft-fixture-check: truncated {label}: {len(ours)} layers, ranks equal, max |kept share - torch| {worst:.1e}  {'ok' if ok else 'MISMATCH'}")
sys.exit(1 if bad else 0)
PY
python3 - "$FIX" "$W" <<'PY'
import json, sys
fix, w = sys.argv[1], sys.argv[2]
run_of = {"lora": "peft-lora", "pissa-converted": "peft-pissa", "pissa-residual": "peft-pissa", "hdpissa-export": "peft-hd"}
recs = [json.loads(l) for l in open(fix) if l.strip()]
bad = 0
for r in recs:
    ours = json.load(open(f"{w}/{run_of[r['label']]}.json"))
    rel = abs(ours["loss"] - r["loss_peft"]) / abs(r["loss_peft"])
    ok = rel <= 1e-4 and ours["n_tokens"] == r["n_tokens"]
    bad += not ok
    print(f"peft-fixture-check: {r['label']}: ours {ours['loss']:.8f}  PEFT {r['peft']} {r['loss_peft']:.8f}  "
          f"|rel| {rel:.2e}  tokens {ours['n_tokens']}/{r['n_tokens']}  {'ok' if ok else 'MISMATCH'}")
if len(recs) != 4:
    print(f"peft-fixture-check: expected 4 records, found {len(recs)}"); bad += 1
print("peft-fixture-check: " + ("PASS" if not bad else "FAIL"))
sys.exit(1 if bad else 0)
PY
