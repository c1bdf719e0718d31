# call 37 (session 20): LLaMA-2-7B 2 x 512 x 8 with the shared-input backward: HD-PiSSA K1 at this
# commit and at 41a8cf5 (baseline binary), LoRA, against PEFT LoRA + torch.compile, one table.
# Run as: bash scripts/device-calls/c37.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o37; mkdir -p $O
OUT=$O/s2 WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=llama2-7b MICRO_BATCHES=2 \
  OURS_CONFIGS="hdpissa-K1 lora" BASELINE_BIN=$PWD/.devbin/hdpissa-train-41a8cf5 BASELINE_LABEL=41a8cf5 \
  BASELINE_CONFIGS="hdpissa-K1" PEFT_METHODS=lora-bf16-compile DEADLINE_S=$(( END - 5 - $(el) )) \
  scripts/throughput.sh > $O/s2.txt 2>&1
cp $O/s2/throughput.md $OUT/7b-mb2.md 2>/dev/null; grep -E "rc |total" $O/s2/throughput.log; echo "7b mb2 done at $(el) s"
grep -E "^\| (\*\*)?(ours|peft)" $O/s2/throughput.md | head -5
tar czf $OUT/c37-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
