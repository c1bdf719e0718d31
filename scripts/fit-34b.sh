#!/usr/bin/env bash
# fit-34b.sh — issue 13's one-GPU fit target: a CodeLlama-34B-shaped HD-PiSSA run (hidden 8192,
# 48 layers, 64 heads, 8 KV heads, MLP 22016; one group per process, r 16, micro-batch 2 x 512,
# --dtype bf16 with the 2-byte W policy bf16-sr, the default) on one H200, and what it takes:
# peak device memory (the trainer's cudaMemGetInfo samples and nvidia-smi's every 0.5 s), the host's
# peak RSS, start-up (load, engine + 336 SVD inits) and tokens/s.
#
# The checkpoint (67.5 GB of bf16, random-init: memory and speed only) is larger than the device
# machine's disk (64 GiB) and than half its RAM, so make_model.py --shard-dirs writes it shard by
# shard into whichever of SHARD_DIRS has the most room (default: RAM-backed /dev/shm and $WORK),
# symlinked from one directory. The trainer loads it with its target linears stored (the GPU path's
# load: llama/stored_linears.hpp): no host fp32 copy (135 GB) and no host bf16 copy; each linear is
# uploaded from the mapped shards. The shards are removed at the end (KEEP_MODEL=1 keeps them).
#
# Usage (repository root, on the GPU machine; carry .devbin and .devdata/throughput):
#   source scripts/prebuilt-env.sh; OUT=$OUT/fit34 PREBUILT=$PWD/.devbin scripts/fit-34b.sh
# Env: PREBUILT (dir with hdpissa-train) or BIN [build/gpu/examples/llama], WORK [/tmp/fit34],
#   SHARD_DIRS [/dev/shm/hdpissa-m34,$WORK/shards], STEPS [4], MB [2], SEQ [512], LAYERS [48]
#   (a shorter model of the same width), W_PRECISION [bf16-sr], EXTRA (more hdpissa-train flags),
#   THROUGHPUT_DATA [.devdata/throughput], OUT [build/gpu/fit34], KEEP_MODEL [0], RAM_GB [what is
#   missing + 4] (the tmpfs mounted, as root, when SHARD_DIRS lack the room). Cleanup removes only the
#   model-*-of-*.safetensors shards, the directories left empty and the checkpoint directory.
# Output: OUT/fit34.md (one table), OUT/train.log, OUT/metrics.jsonl, OUT/smi.csv, OUT/make_model.log.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK=${WORK:-/tmp/fit34}
OUT=${OUT:-$ROOT/build/gpu/fit34}
DEV=${THROUGHPUT_DATA:-$ROOT/.devdata/throughput}
SHARD_DIRS=${SHARD_DIRS:-/dev/shm/hdpissa-m34,$WORK/shards}
STEPS=${STEPS:-4} MB=${MB:-2} SEQ=${SEQ:-512} LAYERS=${LAYERS:-48} W_PRECISION=${W_PRECISION:-bf16-sr}
if [[ -n "${PREBUILT:-}" ]]; then T="$PREBUILT/hdpissa-train"; else T="${BIN:-$ROOT/build/gpu/examples/llama}/hdpissa-train"; fi
[[ -x "$T" ]] || { echo "fit-34b: expected an executable hdpissa-train at $T (set PREBUILT or BIN)" >&2; exit 2; }
for f in train.jsonl tokenizer.model; do
  [[ -f "$DEV/$f" ]] || { echo "fit-34b: expected $DEV/$f (scripts/throughput.sh prepare; carry .devdata/throughput)" >&2; exit 2; }
done
mkdir -p "$OUT" "$WORK"
MODEL="$WORK/codellama-34b-L$LAYERS"
cleanup() {
  [[ -n "${SMI_PID:-}" ]] && kill "$SMI_PID" 2>/dev/null
  if [[ "${KEEP_MODEL:-0}" != 1 ]]; then  # only what make_model.py wrote: the shards, then the empty dirs
    IFS=',' read -ra _d <<<"$SHARD_DIRS"
    for d in "${_d[@]}"; do
      rm -f "$d"/model-*-of-*.safetensors
      rmdir "$d" 2>/dev/null
    done
    rm -rf "$MODEL"
    [[ -n "${RAM_MOUNT:-}" ]] && umount "$RAM_MOUNT" 2>/dev/null && rmdir "$RAM_MOUNT" 2>/dev/null
  fi
}
trap cleanup EXIT
say() { echo "[fit-34b $(date +%T)] $*" | tee -a "$OUT/fit34.log"; }
say "free: $(free -g | awk '/Mem:/{print $2" GiB RAM, "$7" available"}'); /dev/shm $(df -h /dev/shm | awk 'NR==2{print $4}') free; $WORK $(df -h "$WORK" | awk 'NR==2{print $4}') free"

# ---- 1. the checkpoint (67.5 GB at 48 layers): if SHARD_DIRS lack the room (a container's /dev/shm
# can be tiny) and we are root, a tmpfs of RAM_GB [48] is mounted at $WORK/ram and added to them
need_gb=$(( 3 + 68 * LAYERS / 48 ))
have_gb=0
IFS=',' read -ra _dirs <<<"$SHARD_DIRS"
declare -A _seen=()  # free space per filesystem, counted once
for d in "${_dirs[@]}"; do
  mkdir -p "$d" 2>/dev/null || continue
  fsid=$(stat -f -c %i "$d")
  [[ -n "${_seen[$fsid]:-}" ]] && continue
  _seen[$fsid]=1
  have_gb=$(( have_gb + $(df -BG --output=avail "$d" | tail -1 | tr -dc 0-9) ))
done
if [[ ! -f "$MODEL/config.json" ]] && (( have_gb < need_gb )); then
  ram_gb=${RAM_GB:-$(( need_gb - have_gb + 4 ))}
  if [[ $(id -u) == 0 ]] && mkdir -p "$WORK/ram" && mount -t tmpfs -o size="${ram_gb}g" tmpfs "$WORK/ram" 2>>"$OUT/fit34.log" \
     && (( have_gb + ram_gb >= need_gb )); then
    RAM_MOUNT="$WORK/ram"; SHARD_DIRS="$SHARD_DIRS,$RAM_MOUNT"
    say "SHARD_DIRS had ${have_gb} GB of the ${need_gb} needed: mounted a ${ram_gb} GB tmpfs at $RAM_MOUNT"
  else
    say "SHARD_DIRS ($SHARD_DIRS) have ${have_gb} GB free, the checkpoint needs ~${need_gb} GB, and no tmpfs could be mounted: set SHARD_DIRS or LAYERS"
    exit 2
  fi
fi
if [[ ! -f "$MODEL/config.json" ]]; then
  s=$(date +%s)
  layer_flag=(); [[ "$LAYERS" != 48 ]] && layer_flag=(--layers "$LAYERS")
  python3 "$ROOT/bench/e2e/make_model.py" "$MODEL" --preset codellama-34b ${layer_flag[@]+"${layer_flag[@]}"} --seed 0 \
    --shard-dirs "$SHARD_DIRS" >"$OUT/make_model.log" 2>&1 || { say "make_model.py failed:"; tail -5 "$OUT/make_model.log"; exit 1; }
  say "model: $(tail -1 "$OUT/make_model.log" | cut -c1-200) ($(( $(date +%s) - s )) s)"
fi

# ---- 2. the run, nvidia-smi sampling beside it
nvidia-smi --query-gpu=timestamp,memory.used,memory.total --format=csv,noheader,nounits -lms 500 >"$OUT/smi.csv" 2>/dev/null &
SMI_PID=$!
timefmt=()
[[ -x /usr/bin/time ]] && timefmt=(/usr/bin/time -v -o "$OUT/time.txt")
s=$(date +%s.%N)
# shellcheck disable=SC2086
${timefmt[@]+"${timefmt[@]}"} "$T" --device cuda --dtype bf16 --model "$MODEL" --tokenizer "$DEV/tokenizer.model" --data "$DEV/train.jsonl" \
  --method hdpissa --groups-per-process 1 --rank 16 --alpha 16 --targets q,k,v,o,gate,up,down --svd randomized \
  --w-precision "$W_PRECISION" --micro-batch "$MB" --grad-accum 1 --max-len "$SEQ" --max-steps "$STEPS" --lr 2e-5 \
  --warmup-ratio 0 --log-every 1 --metrics "$OUT/metrics.jsonl" ${EXTRA:-} >"$OUT/train.log" 2>&1
rc=$?
wall=$(python3 -c "import time; print(round(time.time() - $s, 1))")
kill "$SMI_PID" 2>/dev/null; SMI_PID=
say "hdpissa-train: rc $rc in $wall s; $(grep -E 'trained|error' "$OUT/train.log" | tail -1 | cut -c1-200)"
[[ $rc -ne 0 ]] && tail -8 "$OUT/train.log" | sed 's/^/    /' | tee -a "$OUT/fit34.log"

# ---- 3. the table
python3 - "$OUT" "$rc" "$wall" "$LAYERS" "$MB" "$SEQ" "$W_PRECISION" <<'PY' | tee "$OUT/fit34.md"
import json, re, sys, pathlib
out, rc, wall, layers, mb, seq, wp = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], *sys.argv[4:]
recs = [json.loads(l) for l in open(out / "metrics.jsonl") if l.strip()] if (out / "metrics.jsonl").exists() else []
steps = [r for r in recs if r.get("type") == "step"]
summ = next((r for r in recs if r.get("type") == "summary"), {})
smi = []
for line in open(out / "smi.csv") if (out / "smi.csv").exists() else []:
    p = [x.strip() for x in line.split(",")]
    if len(p) >= 3 and p[1].isdigit():
        smi.append((int(p[1]), int(p[2])))
log = (out / "train.log").read_text(errors="replace") if (out / "train.log").exists() else ""
def grab(pat):
    m = re.search(pat, log)
    return m.group(1) if m else "?"
rss = "?"
if (out / "time.txt").exists():
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", (out / "time.txt").read_text())
    rss = f"{int(m.group(1)) / 2**20:.1f} GiB" if m else "?"
peak = summ.get("peak_device_bytes") or max((s.get("peak_device_bytes", 0) for s in steps), default=0)
tps = [s["tokens_per_s"] for s in steps[1:]] or [s.get("tokens_per_s", 0) for s in steps]
print(f"CodeLlama-34B shape ({layers} of 48 layers), HD-PiSSA one group per process, r 16, {mb} x {seq}, "
      f"bf16 compute, --w-precision {wp}; hdpissa-train rc {rc}, {wall} s wall\n")
print("| quantity | value |\n|---|---|")
print(f"| steps done | {len(steps)} |")
print(f"| peak device memory (trainer, cudaMemGetInfo) | {peak / 2**30:.1f} GiB |" if peak else "| peak device memory (trainer) | ? |")
if smi:
    print(f"| peak device memory (nvidia-smi, 0.5 s samples) | {max(u for u, _ in smi) / 1024:.1f} GiB of {smi[0][1] / 1024:.1f} |")
print(f"| host peak RSS (/usr/bin/time) | {rss} |")
wbytes = grab(r"W (\d+) bytes per target parameter")
load = grab(r"loaded \d+ layers in ([0-9.]+ s)")
engine = grab(r"engine ready in ([0-9.]+ s)")
print(f"| W bytes per target parameter | {wbytes} |")
print(f"| load | {load} |")
print(f"| engine (upload + SVD inits) | {engine} |")
print(f"| tokens/s (steps after the first, median) | {sorted(tps)[len(tps) // 2]:.0f} |" if tps else "| tokens/s | ? |")
print(f"| final loss | {steps[-1]['loss']:.4f} |" if steps else "| final loss | ? |")
PY
exit "$rc"
