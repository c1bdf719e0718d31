# call 32 (session 20): what to work on next for issue 20, measured in one call.
# 1) The trainer's loss section is +1.3 ms per TinyLlama 8 x 512 micro-batch over the bare model's
#    (c31: 3.71 vs 2.43 ms): the bare model with all rows as targets and with the first 20 % of every
#    row masked as a prompt (the trainer's data has ≈ 20 %), then the trainer's profile.
# 2) LLaMA-2-7B 8 x 512 x 2: --compute fp8 (HD-PiSSA K1, LoRA; last measured in session 12, H200)
#    against bf16 and PEFT LoRA + torch.compile in the same call, then the section profile of the bare
#    model, HD-PiSSA K1 and HD-PiSSA K1 --compute fp8 (where a 1.6x FP8 lead would have to come from).
# 3) the low-rank DWU kernel after the words epilogue (per-shape times of the optimizer step's updates).
# Binaries: HEAD at pack time (.devbin/COMMIT). Run as: bash scripts/device-calls/c32.sh
# (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o32; mkdir -p $O
for pf in 0 0.2; do
  timeout 60 .devbin/bench_llama_cuda --shape tinyllama --batch 8 --seq 512 --steps 10 --warmup 3 \
    --prompt-fraction $pf > $O/bare-pf$pf.txt 2>&1
  echo "bare prompt-fraction $pf rc $? at $(el) s"; grep -E "targets|loss|profiled" $O/bare-pf$pf.txt | head -8
done
OUT=$O/prof WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPE=tinyllama MB=8 GA=2 CONFIGS="hdpissa-K1" \
  BARE_ARGS="--prompt-fraction 0.2" timeout 120 scripts/profile-step.sh > $O/prof.txt 2>&1
echo "tiny profile rc $? at $(el) s"; cat $O/prof/profile.md; cp $O/prof/profile.md $OUT/profile-tiny.md 2>/dev/null
OUT=$O/s8 WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=llama2-7b MICRO_BATCHES=8 \
  OURS_CONFIGS="hdpissa-K1 hdpissa-K1+fp8 lora lora+fp8" PEFT_METHODS=lora-bf16-compile \
  DEADLINE_S=$(( END - 150 - $(el) )) scripts/throughput.sh > $O/s8.txt 2>&1
cp $O/s8/throughput.md $OUT/7b-mb8.md 2>/dev/null; grep -E "rc |total" $O/s8/throughput.log; echo "7b mb8 done at $(el) s"
grep -E "^\| (\*\*)?(ours|peft)" $O/s8/throughput.md | head -6
if (( END - $(el) > 80 )); then
  OUT=$O/p7 WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPE=llama2-7b MB=8 GA=2 STEPS=4 CONFIGS="hdpissa-K1" \
    timeout 60 scripts/profile-step.sh > $O/p7.txt 2>&1
  echo "7b profile rc $? at $(el) s"
  OUT=$O/p7f WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPE=llama2-7b MB=8 GA=2 STEPS=4 CONFIGS="hdpissa-K1" \
    EXTRA="--compute fp8" BARE_ARGS="--steps 2 --warmup 1" timeout $(( END - 40 - $(el) )) scripts/profile-step.sh > $O/p7f.txt 2>&1
  echo "7b fp8 profile rc $? at $(el) s"; cat $O/p7/profile.md $O/p7f/profile.md
  cat $O/p7/profile.md $O/p7f/profile.md > $OUT/profile-7b.md 2>/dev/null
fi
if (( END - $(el) > 30 )); then
  timeout $(( END - 10 - $(el) )) .devbin/bench_dwu_lowrank --reps 10 --policy sr --rows-per-thread 8 > $O/lowrank.txt 2>&1
  echo "lowrank rc $? at $(el) s"; grep -v JSON $O/lowrank.txt | tail -24
fi
cp $O/bare-pf*.txt $O/lowrank.txt $OUT/ 2>/dev/null; tar czf $OUT/c32-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
