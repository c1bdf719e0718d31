# call 32 (written in session 19 for the next session; binaries: build and pack at HEAD first, e.g.
#   cmake --build build/gpu-local -j2 --target hdpissa-train bench_llama_cuda bench_dwu_lowrank
#   scripts/prebuilt-pack.sh build/gpu-local hdpissa-train bench_llama_cuda bench_dwu_lowrank
# and make .devdata as session 19 did: debs, throughput (scripts/throughput.sh prepare)).
# 1) The trainer's loss section is +1.3 ms per TinyLlama 8 x 512 micro-batch over the bare model's
#    (c31: 3.71 vs 2.43 ms) and nothing in the code explains it: the bare model with all rows as targets
#    and with the first 20 % of every row masked as a prompt (the trainer's data has ≈ 20 %), then
#    the trainer's profile, in one call. 2) the low-rank DWU kernel after the words epilogue, kd 0 to
#    64 (what is left per element: the hash and the products).
# Run as: bash scripts/device-calls/c32.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o32; mkdir -p $O
for pf in 0 0.2; do
  timeout 120 .devbin/bench_llama_cuda --shape tinyllama --batch 8 --seq 512 --steps 10 --warmup 3 \
    --prompt-fraction $pf > $O/bare-pf$pf.txt 2>&1
  echo "bare prompt-fraction $pf rc $? at $(el) s"; grep -E "targets|loss|profiled" $O/bare-pf$pf.txt | head -8
done
OUT=$O/prof WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPE=tinyllama MB=8 GA=2 CONFIGS="hdpissa-K1" \
  BARE_ARGS="--prompt-fraction 0.2" timeout 200 scripts/profile-step.sh > $O/prof.txt 2>&1
echo "profile rc $? at $(el) s"; cat $O/prof/profile.md; cp $O/prof/profile.md $OUT/ 2>/dev/null
timeout 90 .devbin/bench_dwu_lowrank --reps 20 --policy sr --rows-per-thread 8 > $O/lowrank.txt 2>&1
echo "lowrank rc $? at $(el) s"; grep -v JSON $O/lowrank.txt | tail -24
cp $O/bare-pf*.txt $O/lowrank.txt $OUT/; tar czf $OUT/c32-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
