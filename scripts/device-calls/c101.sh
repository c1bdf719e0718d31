# call 101 (session 35; NOT RUN: merged into c102): next/prio-main (main + the stream priorities: HDPISSA_ADAPTER_STREAM_PRIORITY,
# HDPISSA_CUDA_DWU_PRIORITY = default | high), right after c100 on the same machine (c100's
# decode-bench left the 7B model in /tmp/hdb/llama2-7b-L32; made here otherwise). 1) the library
# cases touched (the priority options and the deferred DWU on high-priority apply streams against
# the CPU, bit for bit); 2) the whole trainer suite (the priority case; and session 34's RMSNorm
# griddepcontrol change, which c100 no longer runs); 3) the A/B: TinyLlama 2 x 512 x 8 and LLaMA-2-7B
# 2 x 512 x 8, HD-PiSSA K1 and LoRA with the second stream / the DWU apply streams at high priority.
# Build first: hdpissa_cuda_tests hdpissa_cuda_train_tests hdpissa-train (on next/prio-main); pack.
# Run as: END_S=560 bash scripts/device-calls/c101.sh (carry .devpack, .devdata)
source scripts/device-calls/common.sh
O=/tmp/o101; mkdir -p $O; W=/tmp/hdb; mkdir -p $W
nvidia-smi --query-gpu=name --format=csv,noheader | head -1; cat .devbin/COMMIT
run_cases $O prio-lib hdpissa_cuda_tests 90 "DwuGemm selection*,DWU with a bf16 W storage*"
run_suites $O hdpissa_cuda_train_tests:230
throughput $O tiny2 SHAPES=tinyllama MICRO_BATCHES=2 PEFT_METHODS=none \
  OURS_CONFIGS="hdpissa-K1 hdpissa-K1+sideprio hdpissa-K1+dwuprio hdpissa-K1+sideprio+dwuprio lora lora+sideprio"
throughput $O s7b2 SHAPES=llama2-7b MICRO_BATCHES=2 MODEL_DIR_7B=$W/llama2-7b-L32 PEFT_METHODS_7B=none \
  OURS_CONFIGS_7B="hdpissa-K1 hdpissa-K1+sideprio hdpissa-K1+sideprio+dwuprio"
tar czf $OUT/c101-logs.tgz -C $O . 2>/dev/null
echo "done at $(el) s"
