# call 59 (session 25; after c58, same .devpack): LLaMA-2-7B shape 2 x 512 x 8, HD-PiSSA K1 with the
# stacked GEMMs and the second stream (the defaults) and with neither (+unstacked+onestream), LoRA,
# against PEFT LoRA + torch.compile in the same call (issue 20's 1.3x row). First the trainer suite's
# stacked-vs-per-member case again (its tolerance was tightened after c58: first loss 1e-3, later
# 5e-3, and ΔW within 0.5 relative).
# Run as: bash scripts/device-calls/c59.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o59; mkdir -p $O
ARGS='-tc=*HDPISSA_STACKED_LINEARS*' run_suites $O hdpissa_cuda_train_tests:100
grep -h -E "ERROR|relative:" $O/suites/*.log 2>/dev/null | head -12
OUT=$O/b WORK=/tmp/tpb PREBUILT=$PWD/.devbin SHAPES=llama2-7b MICRO_BATCHES=2 OURS_STEPS=6 \
  OURS_CONFIGS_7B="hdpissa-K1 hdpissa-K1+unstacked+onestream lora" PEFT_METHODS=lora-bf16-compile \
  DEADLINE_S=$(( END - 10 - $(el) )) scripts/throughput.sh > $O/b.txt 2>&1
cp $O/b/throughput.md $OUT/llama2-7b-mb2.md 2>/dev/null; echo "7b done at $(el) s"
grep -E "^\| (\*\*)?(ours|peft)" $O/b/throughput.md | head -5
tar czf $OUT/c59-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
