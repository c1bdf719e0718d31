# call 65 (session 26; branch next/s26 = main + next/review25 + next/graphs + next/side-lora2, binaries
# at 01645eb in .devpack): all three GPU suites (the graphs case: eager bit for bit; the second
# stream's case now with every LoRA target on it; the stacked case after the review's dedup), then
# TinyLlama 2 x 512 x 8: HD-PiSSA K1 and LoRA with and without +graphs, LoRA +onestream (the
# per-target side path's A/B), PEFT + compile in the same call.
# Run as: bash scripts/device-calls/c65.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o65; mkdir -p $O
run_suites $O hdpissa_cuda_tests:60 hdpissa_llama_cuda_tests:40 hdpissa_cuda_train_tests:170
grep -h -E "ERROR|replayed|graph" $O/*.log 2>/dev/null | head -12
OUT=$O/t WORK=/tmp/tpt PREBUILT=$PWD/.devbin SHAPES=tinyllama MICRO_BATCHES=2 OURS_STEPS=8 \
  OURS_CONFIGS="hdpissa-K1 hdpissa-K1+graphs lora lora+graphs lora+onestream" PEFT_METHODS=lora-bf16-compile \
  DEADLINE_S=$(( END - 10 - $(el) )) scripts/throughput.sh > $O/t.txt 2>&1
cp $O/t/throughput.md $OUT/tinyllama-mb2.md 2>/dev/null; echo "tinyllama done at $(el) s"
grep -E "^\| (\*\*)?(ours|peft)" $O/t/throughput.md | head -8
tar czf $OUT/c65-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
