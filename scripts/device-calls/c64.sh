# call 64 (written in session 25 for the next session; branch next/graphs — build hdpissa-train and
# hdpissa_cuda_train_tests from it and pack them first): --cuda-graphs, never run on a GPU. The
# trainer suite's graphs case (eager bit for bit; replays > 0, no failed capture) and the CLI, then
# TinyLlama 2 x 512 x 8 HD-PiSSA K1 and LoRA with and without +graphs, PEFT + compile in the call.
# Run as: bash scripts/device-calls/c64.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o64; mkdir -p $O
ARGS='-tc=*cuda-graphs*' run_suites $O hdpissa_cuda_train_tests:150
grep -h -E "ERROR|replayed" $O/suites/*.log 2>/dev/null | head -12
OUT=$O/t WORK=/tmp/tpt PREBUILT=$PWD/.devbin SHAPES=tinyllama MICRO_BATCHES=2 OURS_STEPS=8 \
  OURS_CONFIGS="hdpissa-K1 hdpissa-K1+graphs lora lora+graphs" PEFT_METHODS=lora-bf16-compile \
  DEADLINE_S=$(( END - 10 - $(el) )) scripts/throughput.sh > $O/t.txt 2>&1
cp $O/t/throughput.md $OUT/tinyllama-mb2.md 2>/dev/null; echo "tinyllama done at $(el) s"
grep -E "^\| (\*\*)?(ours|peft)" $O/t/throughput.md | head -6
tar czf $OUT/c64-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
