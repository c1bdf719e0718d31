#!/usr/bin/env bash
# MPI-free launch on a GPU machine (issue 14): builds hdpissa-run, hdpissa-train and
# tests/launch/launch_nccl_worker with the gpu preset, then runs
#   w1-bitident  hdpissa-run --nproc-per-node 1 hdpissa-train --device cuda (NCCL bootstrapped over the
#                socket rendezvous, one rank) vs plain hdpissa-train --device cuda, K = 2 both:
#                model.safetensors must be byte-identical; the log must name the NCCL communicator
#   nccl-np1     launch_nccl_worker ok under hdpissa-run -n 1: 200 exact all_gathers (2^20 floats)
#   nccl-abort   a rank aborting mid-all-gather makes hdpissa-run exit non-zero within the deadline:
#                with >= 2 GPUs rank 1 SIGKILLs itself at all_gather 50 of 2 ranks (rank 0's NCCL must
#                fail or time out and abort); with 1 GPU the only rank calls ncclCommAbort at all_gather 50
#   nccl-np2     (>= 2 GPUs) launch_nccl_worker ok with 2 ranks, and hdpissa-train --nproc-per-node 2
#                x 1 group vs one process x 2 groups, bit for bit (SKIP otherwise)
# Usage (repository root): DATA=/path/to/shared/data scripts/gpu-launch-check.sh
#   DATA  folder with stories260K-hf/ and gsm8k/train.jsonl (default $HDPISSA_DATA, else ../shared/data)
#   BIN   build directory (default build/gpu-launch)   OUT  logs (default runs/gpu-launch-check)
# Exit status 0 when nothing failed. Last line: gpu-launch-check: PASS|FAIL ….
set -uo pipefail
BIN=${BIN:-build/gpu-launch}
DATA=${DATA:-${HDPISSA_DATA:-../shared/data}}
OUT=${OUT:-runs/gpu-launch-check}
JOBS=${JOBS:-$(nproc)}
[ -d /usr/local/cuda/bin ] && export PATH=/usr/local/cuda/bin:$PATH
export NCCL_NVLS_ENABLE=0 HDPISSA_COMM_TIMEOUT_S=${HDPISSA_COMM_TIMEOUT_S:-30}
mkdir -p "$OUT"
source scripts/device-env.sh  # PCRE2 where the machine lacks it (.devdata/debs)
declare -a SUMMARY
fail=0
note() { SUMMARY+=("$1"); echo "gpu-launch-check: $1"; case "$1" in FAIL*) fail=1;; esac; }

if ! [ -f "$BIN/CMakeCache.txt" ]; then
  cmake --preset gpu -B "$BIN" -DHDPISSA_BUILD_TESTS=ON -DHDPISSA_BUILD_EXAMPLES=ON -DHDPISSA_BUILD_BENCH=OFF \
        -DHDPISSA_LLAMA_DEFAULT_DATA="$(realpath "$DATA")" > "$OUT/configure.log" 2>&1 ||
    { tail -30 "$OUT/configure.log"; echo "gpu-launch-check: FAIL (configure)"; exit 1; }
fi
echo "gpu-launch-check: building in $BIN (-j$JOBS)"
cmake --build "$BIN" --target hdpissa-run hdpissa-train hdpissa_launch_nccl_worker -j"$JOBS" > "$OUT/build.log" 2>&1 ||
  { tail -30 "$OUT/build.log"; echo "gpu-launch-check: FAIL (build, $OUT/build.log)"; exit 1; }
RUN=$BIN/tools/hdpissa-run
TRAIN=$BIN/examples/llama/hdpissa-train
WORKER=$BIN/tests/launch/hdpissa_launch_nccl_worker
GPUS=$(nvidia-smi -L 2>/dev/null | wc -l)
echo "gpu-launch-check: $GPUS GPU(s); NCCL_NVLS_ENABLE=$NCCL_NVLS_ENABLE HDPISSA_COMM_TIMEOUT_S=$HDPISSA_COMM_TIMEOUT_S"

ARGS=(--device cuda --model "$DATA/stories260K-hf" --data "$DATA/gsm8k/train.jsonl" --max-examples 200
      --method hdpissa --rank 4 --lr 2e-3 --max-len 256 --max-steps 4 --threads 1)
W=$OUT/scratch; rm -rf "$W"; mkdir -p "$W"

# 1. world size 1 through the new bootstrap == single process, bit for bit.
"$TRAIN" "${ARGS[@]}" --groups-per-process 2 --output "$W/single" > "$W/single.log" 2>&1
rc1=$?
"$RUN" --nproc-per-node 1 "$TRAIN" "${ARGS[@]}" --groups-per-process 2 --output "$W/w1" > "$W/w1.log" 2>&1
rc2=$?
if [ $rc1 -ne 0 ] || [ $rc2 -ne 0 ]; then note "FAIL w1-bitident (exit $rc1 / $rc2; $W/single.log, $W/w1.log)"
elif ! grep -q "NCCL" "$W/w1.log"; then note "FAIL w1-bitident (the launched run does not name NCCL: $W/w1.log)"
elif cmp -s "$W/single/model.safetensors" "$W/w1/model.safetensors"; then note "PASS w1-bitident (model.safetensors identical)"
else note "FAIL w1-bitident (model.safetensors differ)"; fi

# 2. NCCL over the socket bootstrap, one rank.
if "$RUN" -n 1 "$WORKER" ok > "$W/nccl1.log" 2>&1 && grep -q "OK 200 all_gathers" "$W/nccl1.log"; then
  note "PASS nccl-np1"; else note "FAIL nccl-np1 ($W/nccl1.log)"; fi

# 3. The NCCL error path: the launcher must exit non-zero, within the deadline.
NP=1; VICTIM=0; [ "$GPUS" -ge 2 ] && { NP=2; VICTIM=1; }
t=$SECONDS
timeout $((HDPISSA_COMM_TIMEOUT_S * 3 + 30)) "$RUN" -n $NP --grace 5 "$WORKER" abort $VICTIM > "$W/abort.log" 2>&1
rc=$?; dt=$((SECONDS - t))
if [ $rc -eq 124 ]; then note "FAIL nccl-abort (hung: killed by timeout; $W/abort.log)"
elif [ $rc -ne 0 ] && [ $rc -ne 77 ]; then note "PASS nccl-abort ($NP rank(s): launcher exit $rc after ${dt} s)"
else note "FAIL nccl-abort (launcher exit $rc; $W/abort.log)"; fi

# 4. Two GPUs: NCCL with 2 ranks, and the trainer over 2 processes vs 1 process x 2 groups.
if [ "$GPUS" -ge 2 ]; then
  if "$RUN" -n 2 "$WORKER" ok > "$W/nccl2.log" 2>&1; then note "PASS nccl-np2 worker"; else note "FAIL nccl-np2 worker ($W/nccl2.log)"; fi
  if "$TRAIN" --nproc-per-node 2 "${ARGS[@]}" --groups-per-process 1 --output "$W/np2" > "$W/np2.log" 2>&1 &&
     cmp -s "$W/single/model.safetensors" "$W/np2/model.safetensors"; then note "PASS nccl-np2 trainer (bit-identical to 1 x 2)"
  else note "FAIL nccl-np2 trainer ($W/np2.log; compare with $W/single)"; fi
else
  note "SKIP nccl-np2 (one GPU)"
fi

printf '%s\n' "${SUMMARY[@]}" > "$OUT/summary.txt"
if [ $fail -eq 0 ]; then echo "gpu-launch-check: PASS (${#SUMMARY[@]} checks, see $OUT/summary.txt)"; exit 0; fi
echo "gpu-launch-check: FAIL (see $OUT/summary.txt)"; exit 1
