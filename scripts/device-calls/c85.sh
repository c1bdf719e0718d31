# call 85 (session 31, branch next/overlap = next/streams + the DWU step's W updates beside the next
# forward: UpdateOptions::deferred_apply_join, HDPISSA_DWU_OVERLAP=1). c84 (same session) measured the
# ring (slower), the apply streams (+0.4 % at 7B 8 x 512, +1 % at TinyLlama 2 x 512) and host-lean
# (no change). Here: 1) the CUDA cases (deferred joins: per-step W after wait_layer alone = CPU bit for
# bit behind a spin on every side launch; the 3xTF32 SR check's data-derived bound), 2) the trainer
# case (overlap on = off bit for bit: losses, held-out losses, saved state, W) and the second-stream and
# GPU-vs-CPU cases, 3) the trainer at 7B 8 x 512 x 2 (+ PEFT + compile), TinyLlama 2 x 512 x 8 and
# 7B 2 x 512 x 8: HD-PiSSA K1 against K1+overlap (1 side stream) and K1+streams4+overlap.
# Run as: bash scripts/device-calls/c85.sh   (carry [".devpack", ".devdata"]; C85_PEFT= to skip PEFT)
source scripts/device-calls/common.sh
O=/tmp/o85; mkdir -p $O
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
run_cases $O cuda-tests hdpissa_cuda_tests 150 "*bf16 W storage*,*tensor cores*,*options*"
run_cases $O train-tests hdpissa_cuda_train_tests 200 "*HDPISSA_DWU_OVERLAP*,*second stream*,*fp32 GPU equals the CPU*"
throughput $O 7b8 SHAPES=llama2-7b MICRO_BATCHES=8 PEFT_METHODS="${C85_PEFT-lora-bf16-compile}" \
  OURS_CONFIGS="hdpissa-K1 hdpissa-K1+overlap hdpissa-K1+streams4+overlap hdpissa-K1+streams4"
throughput $O tiny2 SHAPES=tinyllama MICRO_BATCHES=2 PEFT_METHODS=" " \
  OURS_CONFIGS="hdpissa-K1 hdpissa-K1+overlap hdpissa-K1+streams4+overlap"
throughput $O 7b2 SHAPES=llama2-7b MICRO_BATCHES=2 PEFT_METHODS=" " OURS_CONFIGS="hdpissa-K1 hdpissa-K1+overlap hdpissa-K1+streams4+overlap"
tar czf $OUT/c85-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
