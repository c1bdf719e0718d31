# call 87 (session 31, branch next/fp8-overlap = main + the DWU overlap with --compute fp8: each
# target's FP8 copy quantised at its first forward after the step instead of right after it, so the
# step's W updates overlap the next forward under FP8 too). 1) the trainer cases: overlap = joined bit
# for bit (8 configurations, 2 with FP8 on the wide model, copies current at the end) and the FP8
# cases; 2) 7B 8 x 512 x 2: HD-PiSSA K1 --compute fp8 (overlap) against +joined, with --keep-swiglu
# too, and PEFT + compile (issue 20's FP8 1.6x row).
# Run as: bash scripts/device-calls/c87.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o87; mkdir -p $O
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
run_cases $O train-tests hdpissa_cuda_train_tests 150 "*HDPISSA_DWU_OVERLAP*,*fp8*,*FP8*"
throughput $O 7b8 SHAPES=llama2-7b MICRO_BATCHES=8 PEFT_METHODS="${C87_PEFT-lora-bf16-compile}" \
  OURS_CONFIGS="hdpissa-K1+fp8 hdpissa-K1+fp8+joined hdpissa-K1+keep+fp8 hdpissa-K1+keep+fp8+joined"
tar czf $OUT/c87-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
