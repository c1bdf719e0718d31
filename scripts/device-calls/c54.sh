# call 54 (session 24; .devpack: hdpissa-train and hdpissa_cuda_train_tests at a5621f5 = next/s24 +
# --keep-swiglu, the rest at 824ee24): the trainer suite (the new --keep-swiglu case: bit-identical
# losses and W, the memory), then the A/B of --keep-swiglu in one call: LLaMA-2-7B 8 x 512
# HD-PiSSA K1 with and without --compute fp8, TinyLlama 8 x 512 HD-PiSSA K1 and LoRA, each against
# PEFT LoRA + torch.compile of the same shape.
# Run as: bash scripts/device-calls/c54.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o54; mkdir -p $O
run_suites $O hdpissa_cuda_train_tests:150
grep -h -E "ERROR|FAILED|keep-swiglu" $O/suites/*.log 2>/dev/null | head -20
OUT=$O/b WORK=/tmp/tpb PREBUILT=$PWD/.devbin SHAPES=llama2-7b MICRO_BATCHES=8 OURS_STEPS=6 \
  OURS_CONFIGS_7B="hdpissa-K1+fp8 hdpissa-K1+keep+fp8 hdpissa-K1 hdpissa-K1+keep" PEFT_METHODS=lora-bf16-compile \
  DEADLINE_S=$(( END - 150 - $(el) )) scripts/throughput.sh > $O/b.txt 2>&1
cp $O/b/throughput.md $OUT/llama2-7b-mb8.md 2>/dev/null; echo "7b done at $(el) s"
grep -E "^\| (\*\*)?(ours|peft)" $O/b/throughput.md | head -6
if (( END - $(el) > 100 )); then
  OUT=$O/t WORK=/tmp/tpt PREBUILT=$PWD/.devbin SHAPES=tinyllama MICRO_BATCHES=8 OURS_STEPS=8 \
    OURS_CONFIGS="hdpissa-K1 hdpissa-K1+keep lora lora+keep" PEFT_METHODS=lora-bf16-compile DEADLINE_S=$(( END - 10 - $(el) )) \
    scripts/throughput.sh > $O/t.txt 2>&1
  cp $O/t/throughput.md $OUT/tinyllama-mb8.md 2>/dev/null; echo "tinyllama done at $(el) s"
  grep -E "^\| (\*\*)?(ours|peft)" $O/t/throughput.md | head -6
fi
tar czf $OUT/c54-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
