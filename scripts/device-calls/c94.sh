# call 94 (session 33): 1) the low-rank DWU kernel's stages 3 (branch next/lowrank-lbuf's
# bench_dwu_lowrank, carried in .devflash): every stage count x both row tilings, SR policy, the 7B
# and TinyLlama totals; 2) c93 (branch next/attn-unroll): the decoder suite, unroll 2 vs 4 at 7B.
# Run as: END_S=420 bash scripts/device-calls/c94.sh   (carry [".devpack", ".devdata", ".devflash"])
T94=$(date +%s)
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | head -1
timeout 100 .devflash/bench_dwu_lowrank --stages all --policy sr > $OUT/c94-lowrank.txt 2>&1
echo "lowrank bench rc $? at $(( $(date +%s) - T94 )) s"
grep -E "^7B|^TinyLlama" $OUT/c94-lowrank.txt
export END_S=$(( ${END_S:-420} - ($(date +%s) - T94) ))
source scripts/device-calls/c93.sh
