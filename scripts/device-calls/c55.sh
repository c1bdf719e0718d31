# call 55 (session 24; .devpack: next/producer-amax — hdpissa-train, hdpissa_cuda_train_tests and
# hdpissa_llama_cuda_tests at its head, the rest at 824ee24): the model suite (the new
# "producer-kept amax" kernel case) and the trainer suite (--keep-swiglu; the FP8 runs with and
# without the producer-kept amax, bit for bit); then, in one call against PEFT LoRA + torch.compile:
# LLaMA-2-7B 8 x 512 HD-PiSSA K1 --compute fp8 with the amax passes (+nohint), with the
# producer-kept amax (the default), and with --keep-swiglu on top; bf16 with and without
# --keep-swiglu; TinyLlama 8 x 512 HD-PiSSA K1 and LoRA with and without --keep-swiglu.
# Run as: bash scripts/device-calls/c55.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o55; mkdir -p $O
run_suites $O hdpissa_llama_cuda_tests:120 hdpissa_cuda_train_tests:150
grep -h -E "ERROR|FAILED|producer-kept amax:|peak device bytes without" $O/suites/*.log 2>/dev/null | head -20
OUT=$O/b WORK=/tmp/tpb PREBUILT=$PWD/.devbin SHAPES=llama2-7b MICRO_BATCHES=8 OURS_STEPS=6 \
  OURS_CONFIGS_7B="hdpissa-K1+nohint+fp8 hdpissa-K1+fp8 hdpissa-K1+keep+fp8 hdpissa-K1 hdpissa-K1+keep" \
  PEFT_METHODS=lora-bf16-compile DEADLINE_S=$(( END - 110 - $(el) )) scripts/throughput.sh > $O/b.txt 2>&1
cp $O/b/throughput.md $OUT/llama2-7b-mb8.md 2>/dev/null; echo "7b done at $(el) s"
grep -E "^\| (\*\*)?(ours|peft)" $O/b/throughput.md | head -7
if (( END - $(el) > 100 )); then
  OUT=$O/t WORK=/tmp/tpt PREBUILT=$PWD/.devbin SHAPES=tinyllama MICRO_BATCHES=8 OURS_STEPS=8 \
    OURS_CONFIGS="hdpissa-K1 hdpissa-K1+keep lora lora+keep" PEFT_METHODS=lora-bf16-compile \
    DEADLINE_S=$(( END - 10 - $(el) )) scripts/throughput.sh > $O/t.txt 2>&1
  cp $O/t/throughput.md $OUT/tinyllama-mb8.md 2>/dev/null; echo "tinyllama done at $(el) s"
  grep -E "^\| (\*\*)?(ours|peft)" $O/t/throughput.md | head -6
fi
tar czf $OUT/c55-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
