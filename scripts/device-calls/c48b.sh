# call 48b (written in session 22; after c48.sh, on the same binaries): 7B 8 x 512 --compute fp8,
# HD-PiSSA K1 (bf16-sr, the default) and LoRA against main's binary with PEFT + compile (expected
# for HD-PiSSA: the optimizer step ~4.5 ms shorter of ~43), then the 7B FP8 profile if time is left.
# Run as: bash scripts/device-calls/c48b.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o48b; mkdir -p $O
OUT=$O/t WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=llama2-7b MICRO_BATCHES=8 OURS_STEPS=8 \
  OURS_CONFIGS="hdpissa-K1+fp8 lora" BASELINE_BIN=$PWD/.devbin/hdpissa-train-base BASELINE_LABEL=main \
  BASELINE_CONFIGS="hdpissa-K1+fp8 lora" PEFT_METHODS=lora-bf16-compile DEADLINE_S=$(( END - 130 )) \
  scripts/throughput.sh > $O/t.txt 2>&1
cp $O/t/throughput.md $OUT/llama2-7b-mb8.md 2>/dev/null; echo "7B done at $(el) s"
grep -E "^\| (\*\*)?(ours|peft)" $O/t/throughput.md | head -6
t=$(( END - 5 - $(el) )); (( t > 120 )) && t=120
if (( t > 60 )); then
  OUT=$O/p WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPE=llama2-7b MB=8 GA=2 STEPS=3 CONFIGS="hdpissa-K1" EXTRA="--compute fp8" \
    timeout $t scripts/profile-step.sh > $O/p.txt 2>&1
  echo "profile rc $? at $(el) s"; cp $O/p/profile.md $OUT/profile-7b-fp8.md 2>/dev/null; cat $O/p/profile.md 2>/dev/null
fi
tar czf $OUT/c48b-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
