# call 86 (session 31, main at the merge of the DWU step's deferred join, HDPISSA_DWU_OVERLAP default
# on): the gates of the merge — the CUDA library suite, the model suite and the trainer suite (every
# GPU-vs-CPU and bit-for-bit case now runs with the overlap on; the overlap case against the joined
# step with held-out losses after every step) — then the A/B on the merged binary: HD-PiSSA K1
# (default) against K1+joined at 7B 8 x 512 x 2 and TinyLlama 2 x 512 x 8; then, as time allows,
# 7B 2 x 512 x 8 against PEFT + compile.
# Run as: bash scripts/device-calls/c86.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o86; mkdir -p $O
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
run_suites $O hdpissa_cuda_tests:150 hdpissa_llama_cuda_tests:60 hdpissa_cuda_train_tests:260
throughput $O 7b8 SHAPES=llama2-7b MICRO_BATCHES=8 PEFT_METHODS=" " OURS_CONFIGS="hdpissa-K1 hdpissa-K1+joined"
throughput $O tiny2 SHAPES=tinyllama MICRO_BATCHES=2 PEFT_METHODS=" " OURS_CONFIGS="hdpissa-K1 hdpissa-K1+joined"
# as time allows: 7B 2 x 512 x 8 (issue 20's 1.3x row) with PEFT + compile in the same call
throughput $O 7b2 SHAPES=llama2-7b MICRO_BATCHES=2 PEFT_METHODS=lora-bf16-compile OURS_CONFIGS="hdpissa-K1"
tar czf $OUT/c86-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
