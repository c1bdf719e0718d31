# call 61 (session 25; the 7B call cut to the budget left, ≈ 419 s with the start): the trainer suite's
# stacked-vs-per-member case (tightened after c58), then LLaMA-2-7B 2 x 512 x 8 HD-PiSSA K1 with the
# stacked GEMMs and the second stream (the defaults) against neither (+unstacked+onestream), and PEFT
# LoRA + torch.compile if the deadline allows.
# Run as: END_S=280 bash scripts/device-calls/c61.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o61; mkdir -p $O
ARGS='-tc=*HDPISSA_STACKED_LINEARS*' run_suites $O hdpissa_cuda_train_tests:80
grep -h -E "ERROR|relative:" $O/suites/*.log 2>/dev/null | head -12
OUT=$O/b WORK=/tmp/tpb PREBUILT=$PWD/.devbin SHAPES=llama2-7b MICRO_BATCHES=2 OURS_STEPS=5 \
  OURS_CONFIGS_7B="hdpissa-K1 hdpissa-K1+unstacked+onestream" PEFT_METHODS=lora-bf16-compile \
  DEADLINE_S=$(( END - 5 - $(el) )) scripts/throughput.sh > $O/b.txt 2>&1
cp $O/b/throughput.md $OUT/llama2-7b-mb2.md 2>/dev/null; echo "7b done at $(el) s"
grep -E "^\| (\*\*)?(ours|peft)|SKIPPED|deadline" $O/b/throughput.md $O/b.txt | head -8
tar czf $OUT/c61-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
