# call 34 (session 20): LLaMA-2-7B 8 x 512 x 2 with the shared-input adapter backward: HD-PiSSA K1
# at this commit and at 41a8cf5 (session 19's code), --compute fp8 (HD-PiSSA K1, LoRA; last measured
# in session 12 on an H200) and LoRA, against PEFT LoRA + torch.compile in the same call; then the
# section profiles of the bare model, HD-PiSSA K1 and HD-PiSSA K1 --compute fp8 (where a 1.6x FP8
# lead would have to come from); then the low-rank DWU kernel per shape.
# Run as: bash scripts/device-calls/c34.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o34; mkdir -p $O
OUT=$O/s8 WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=llama2-7b MICRO_BATCHES=8 \
  OURS_CONFIGS="hdpissa-K1 hdpissa-K1+fp8 lora lora+fp8" BASELINE_BIN=$PWD/.devbin/hdpissa-train-41a8cf5 \
  BASELINE_LABEL=41a8cf5 BASELINE_CONFIGS="hdpissa-K1" PEFT_METHODS=lora-bf16-compile \
  DEADLINE_S=$(( END - 150 - $(el) )) scripts/throughput.sh > $O/s8.txt 2>&1
cp $O/s8/throughput.md $OUT/7b-mb8.md 2>/dev/null; grep -E "rc |total" $O/s8/throughput.log; echo "7b mb8 done at $(el) s"
grep -E "^\| (\*\*)?(ours|peft)" $O/s8/throughput.md | head -7
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
cp $O/lowrank.txt $OUT/ 2>/dev/null; tar czf $OUT/c34-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
