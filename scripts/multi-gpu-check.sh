#!/usr/bin/env bash
# multi-gpu-check.sh — HD-PiSSA on several GPUs of one host (issue 19), in one device call on an
# nvidia-h200-x2 / -x4 / -x8 machine. One process per GPU through the MPI-free launcher
# (hdpissa-train --nproc-per-node N: socket rendezvous, NCCL bootstrapped over it, docs/distributed.md).
#   1. correctness (stories260K, fp32, 3 steps): N processes x V groups vs 1 GPU x (N·V) virtual groups
#      (VirtualRanks), for V = 1 and V = 4 — model.safetensors compared (cmp, else max relative
#      difference, against the GPU-vs-CPU suite's tolerance 1e-4); W's replica checksum is verified
#      by the trainer at the end of every multi-process run (verify_replicas: an error if any rank
#      differs); the per-step losses of the two runs compared;
#   2. scaling: TinyLlama shape (random init, bf16), HD-PiSSA K = number of GPUs, micro-batch 2 x 512,
#      grad-accum 8, r = 16: tokens/s on 1 GPU (K = 1) and on 2, 4, 8 GPUs (as many as the machine
#      has); efficiency = tok/s(N) / (N · tok/s(1)); SHAPES="tinyllama llama2-7b" adds the 7B shape
#      (bench/e2e/make_model.py must know the preset);
#   3. faults: rank 1 killed (SIGKILL) mid-run: the launcher must exit non-zero, every other rank must
#      stop with an error naming rank 1 within HDPISSA_COMM_TIMEOUT_S; the time to exit is reported;
#   4. peer in the same call: PEFT LoRA + torch.compile under DDP (torchrun, the same GPUs), when
#      bench/e2e/peft_throughput.py supports --ddp (reported as not run otherwise).
# Usage (repository root, carry .devdata): DATA=.devdata [SHAPES=tinyllama] [STEPS=5] scripts/multi-gpu-check.sh
# Output: $OUT/multi-gpu.md (the tables) and $OUT/logs.tar.gz.
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${OUT:-runs/multi-gpu-check}
DATA=${DATA:-.devdata}
STEPS=${STEPS:-5}
SHAPES=${SHAPES:-tinyllama}
LOGS=/tmp/multi-gpu-logs
mkdir -p "$OUTDIR" "$LOGS"
R="$OUTDIR/multi-gpu.md"
say() { echo "$*" | tee -a "$R"; }
export NCCL_NVLS_ENABLE=0 HDPISSA_COMM_TIMEOUT_S=${HDPISSA_COMM_TIMEOUT_S:-60}
source scripts/device-env.sh
GPUS=$(nvidia-smi -L 2>/dev/null | wc -l)
say "# multi-gpu-check, $(date -u +%F), $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) x $GPUS, commit $(git rev-parse --short HEAD 2>/dev/null || echo ?)"
(( GPUS >= 2 )) || { say "SKIP: needs at least 2 GPUs, found $GPUS"; exit 77; }
t0=$(date +%s)
{ cmake --preset gpu -DHDPISSA_MPI=OFF && cmake --build build/gpu -j"$(nproc)" --target hdpissa-train hdpissa-run; } \
  > "$LOGS/build.log" 2>&1 || { say "FAIL: build"; grep -E "error" "$LOGS/build.log" | head -20 | tee -a "$R"; exit 1; }
say "build: $(( $(date +%s) - t0 )) s"
T=build/gpu/examples/llama/hdpissa-train
fail=0
compare() {  # a.safetensors b.safetensors -> "identical" or "max rel diff X"
  if cmp -s "$1" "$2"; then echo identical; return 0; fi
  python3 - "$1" "$2" <<'PY'
import json, struct, sys
import numpy as np
def load(p):
    b = open(p, "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n]); out = {}
    for k, v in h.items():
        if k == "__metadata__": continue
        s, e = v["data_offsets"]; dt = {"F32": np.float32, "BF16": np.uint16}[v["dtype"]]
        out[k] = np.frombuffer(b[8 + n + s: 8 + n + e], dtype=dt).astype(np.float64)
    return out
a, b = load(sys.argv[1]), load(sys.argv[2])
worst = max(float(np.abs(a[k] - b[k]).max() / max(np.abs(a[k]).max(), 1e-30)) for k in a)
print(f"max rel diff {worst:.3g}"); sys.exit(0 if worst <= 1e-4 else 1)
PY
}
# ---- 1. correctness
base=(--device cuda --model "$DATA/stories260K-hf" --data "$DATA/gsm8k/train.jsonl" --max-examples 256 --method hdpissa
      --rank 4 --lr 2e-3 --max-len 256 --micro-batch 2 --max-steps 3 --quiet)
say ""; say "## Correctness (stories260K, fp32, hdpissa r = 4, 3 steps)"; say ""
say "| run | vs | model.safetensors | losses |"; say "|---|---|---|---|"
for V in 1 4; do
  K=$(( 2 * V ))
  rm -rf /tmp/mg-one-$K /tmp/mg-two-$K
  timeout 300 $T "${base[@]}" --groups-per-process $K --output /tmp/mg-one-$K --metrics /tmp/mg-one-$K.jsonl > "$LOGS/one-$K.log" 2>&1
  timeout 300 $T --nproc-per-node 2 "${base[@]}" --groups-per-process $V --output /tmp/mg-two-$K --metrics /tmp/mg-two-$K.jsonl > "$LOGS/two-$K.log" 2>&1
  rc=$?
  res=$(compare /tmp/mg-one-$K/model.safetensors /tmp/mg-two-$K/model.safetensors 2>&1) || fail=1
  [[ $rc -ne 0 ]] && { res="FAILED rc $rc"; fail=1; }
  l1=$(python3 -c "import json,sys;print([round(json.loads(l)['loss'],6) for l in open(sys.argv[1]) if '\"step\"' in l and json.loads(l).get('type')=='step'])" /tmp/mg-one-$K.jsonl 2>/dev/null)
  l2=$(python3 -c "import json,sys;print([round(json.loads(l)['loss'],6) for l in open(sys.argv[1]) if '\"step\"' in l and json.loads(l).get('type')=='step'])" /tmp/mg-two-$K.jsonl 2>/dev/null)
  say "| 2 GPUs x $V groups (K = $K) | 1 GPU x $K virtual groups | $res | $([[ "$l1" == "$l2" ]] && echo "equal $l1" || echo "1 GPU $l1, 2 GPUs $l2") |"
done
# ---- 2. scaling
say ""; say "## Scaling (HD-PiSSA, K = GPUs, bf16, micro-batch 2 x 512, grad-accum 8, r = 16, steps 2..$STEPS)"; say ""
say "| shape | GPUs | tok/s (all GPUs) | tok/s per GPU | efficiency | peak GiB per GPU |"; say "|---|---|---|---|---|---|"
for shape in $SHAPES; do
  M=/tmp/mg-$shape
  preset=(); [[ $shape != tinyllama ]] && preset=(--preset "$shape")
  [[ -f $M/config.json ]] || python3 bench/e2e/make_model.py "$M" --seed 0 "${preset[@]}" > "$LOGS/make-$shape.log" 2>&1 ||
    { say "| $shape | - | make_model failed | | | |"; continue; }
  one=0
  for N in 1 2 4 8; do
    (( N > GPUS )) && break
    m=/tmp/mg-tput-$shape-$N.jsonl; rm -f "$m"
    launch=(); (( N > 1 )) && launch=(--nproc-per-node $N)
    timeout 400 $T "${launch[@]}" --device cuda --dtype bf16 --method hdpissa --groups-per-process 1 --model "$M" \
      --tokenizer "$DATA/throughput/tokenizer.model" --data "$DATA/throughput/train.jsonl" --micro-batch 2 --max-len 512 \
      --grad-accum 8 --rank 16 --alpha 16 --lr 1e-4 --max-steps "$STEPS" --svd randomized --quiet --metrics "$m" \
      > "$LOGS/tput-$shape-$N.log" 2>&1 || { say "| $shape | $N | FAILED | | | |"; fail=1; continue; }
    read tok peak < <(python3 - "$m" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
st = [r for r in recs if r.get("type") == "step"][1:]
print(f"{sum(r['tokens'] for r in st) / sum(r['step_s'] for r in st):.0f} "
      f"{max([r.get('peak_device_bytes', 0) for r in recs] + [0]) / 2**30:.2f}")
PY
)
    (( N == 1 )) && one=$tok
    eff=$(python3 -c "print(f'{$tok / ($N * $one):.3f}' if $one else '-')")
    say "| $shape | $N | $tok | $(( tok / N )) | $eff | $peak |"
  done
done
# ---- 3. faults
say ""; say "## Faults"; say ""
s=$(date +%s.%N)
timeout 300 $T --nproc-per-node 2 "${base[@]}" --max-steps 100000 --groups-per-process 1 > "$LOGS/fault.log" 2>&1 &
lp=$!
sleep 20
victim=$(pgrep -f "hdpissa-train.*--max-steps 100000" | while read p; do
  tr '\0' '\n' < /proc/$p/environ 2>/dev/null | grep -qx "RANK=1" && echo "$p"; done | head -1)
if [[ -n "$victim" ]]; then
  k=$(date +%s.%N); kill -9 "$victim"; wait $lp; rc=$?; e=$(date +%s.%N)
  say "rank 1 (pid $victim) SIGKILLed: launcher exit $rc after $(python3 -c "print(f'{$e - $k:.1f}')") s; \
$(grep -c "rank 1" "$LOGS/fault.log") log line(s) name rank 1"
  [[ $rc -eq 0 ]] && fail=1
else
  say "faults: could not find rank 1's process (see fault.log)"; kill $lp 2>/dev/null; fail=1
fi
# ---- 4. peer
say ""
if python3 bench/e2e/peft_throughput.py --help 2>/dev/null | grep -q -- "--ddp"; then
  say "## PEFT LoRA + torch.compile under DDP: see $LOGS/peft-ddp.log"
  torchrun --nproc-per-node "$GPUS" bench/e2e/peft_throughput.py --ddp --compile > "$LOGS/peft-ddp.log" 2>&1
  tail -5 "$LOGS/peft-ddp.log" | tee -a "$R"
else
  say "PEFT + DDP peer: not run (bench/e2e/peft_throughput.py has no --ddp yet)"
fi
say ""; say "total $(( $(date +%s) - t0 )) s, $([[ $fail == 0 ]] && echo PASS || echo FAIL)"
tar -czf "$OUTDIR/logs.tar.gz" -C "$LOGS" .
exit $fail
