# call 39 (written in session 20 for the next session, on branch next/lora-shared; build and pack
# there first: hdpissa-train hdpissa_cuda_train_tests hdpissa_cuda_tests, and keep main's
# hdpissa-train as .devbin/hdpissa-train-main for the A/B): LoRA / PiSSA's shared-input forward and
# backward (AdapterLinear::forward_shared / backward_shared over stacked A copies refreshed every
# step). 1) the trainer suite (LoRA / PiSSA bf16 against the CPU and FP8) and the library suite;
# 2) TinyLlama 8 x 512: LoRA and PiSSA at this branch and at main against PEFT + compile.
# Run as: bash scripts/device-calls/c39.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o39; mkdir -p $O
run_suites $O hdpissa_cuda_train_tests:130 hdpissa_cuda_tests:150
grep -h -E "ERROR|FAILED" $O/suites/*.log | head -20
if (( END - $(el) > 200 )); then
  OUT=$O/t8 WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=tinyllama MICRO_BATCHES=8 \
    OURS_CONFIGS="lora pissa" BASELINE_BIN=$PWD/.devbin/hdpissa-train-main BASELINE_LABEL=main \
    BASELINE_CONFIGS="lora pissa" PEFT_METHODS=lora-bf16-compile \
    DEADLINE_S=$(( END - 10 - $(el) )) scripts/throughput.sh > $O/t8.txt 2>&1
  cp $O/t8/throughput.md $OUT/tiny-mb8.md 2>/dev/null; echo "tiny mb8 done at $(el) s"
  grep -E "^\| (\*\*)?(ours|peft)" $O/t8/throughput.md | head -6
fi
tar czf $OUT/c39-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
