# call 112 (session 37): issue 20's FP8 row and where its time could come from, at LLaMA-2-7B 8 x 512
# x 2 with PEFT LoRA + torch.compile in the same call (the ratio's peer). c111's profile put the fp8
# step's linears backward at 71.3 ms per micro-batch against ≈ 46 ms of FP8 dX GEMMs: the adapter
# gradients (on the second stream) no longer hide behind the shorter FP8 GEMMs. Knobs, one binary
# built from main (written in session 37, not run: no start came):
# the second stream off (+onestream), the fused adapter-gradient kernels (+fused), CUDA graphs
# (+graphs); bf16 HD-PiSSA K1 for the MFU row; PEFT last (skipped if the deadline comes first).
# Run as: END_S=300 bash scripts/device-calls/c112.sh (carry .devpack, .devdata)
source scripts/device-calls/common.sh
O=/tmp/o112; mkdir -p $O
nvidia-smi --query-gpu=name --format=csv,noheader | head -1; cat .devbin/COMMIT
throughput $O s7b8k SHAPES=llama2-7b MICRO_BATCHES=8 PEFT_METHODS_7B=lora-bf16-compile \
  OURS_CONFIGS_7B="hdpissa-K1+fp8+keep hdpissa-K1+fp8+keep+onestream hdpissa-K1+fp8+keep+fused hdpissa-K1+fp8+keep+graphs hdpissa-K1"
tar czf $OUT/c112-logs.tgz -C $O . 2>/dev/null
echo "done at $(el) s"
