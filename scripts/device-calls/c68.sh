# call 68 (session 26; branch next/fp8-shared, binaries in .devpack): the trainer suite (the stacked
# case now with --compute fp8 on the wide model: the group's dX summed by the FP8 GEMMs' beta; the
# second stream's bit-for-bit case, whose FP8 run now takes that path), then LLaMA-2-7B 8 x 512 x 2
# with --compute fp8: the summed path (default) against +unstacked (the per-member path) and
# +onestream, PEFT + compile in the same call.
# Run as: bash scripts/device-calls/c68.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o68; mkdir -p $O
run_suites $O hdpissa_cuda_train_tests:170
grep -h -E "ERROR|stacked calls|ΔW stacked" $O/*.log 2>/dev/null | head -16
OUT=$O/t WORK=/tmp/tpt PREBUILT=$PWD/.devbin SHAPES=llama2-7b MICRO_BATCHES=8 OURS_STEPS=4 \
  OURS_CONFIGS="hdpissa-K1+fp8 hdpissa-K1+fp8+unstacked hdpissa-K1+fp8+onestream" PEFT_METHODS=lora-bf16-compile \
  DEADLINE_S=$(( END - 10 - $(el) )) scripts/throughput.sh > $O/t.txt 2>&1
cp $O/t/throughput.md $OUT/llama2-7b-mb8.md 2>/dev/null; echo "7b done at $(el) s"
grep -E "^\| (\*\*)?(ours|peft)" $O/t/throughput.md | head -8
tar czf $OUT/c68-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
