# call 107 (planned; in docs/pending/next-graph-node-priority.patch, not run): --cuda-graphs with the
# captured kernels keeping their stream's priority (cudaGraphInstantiateFlagUseNodePriority in
# capture_stream_graph). Session 35 measured the adapters' second stream at high priority +3.3-4.3 %
# eager at TinyLlama 2 x 512 but +0.1 % under --cuda-graphs: a replay runs every node at the launch
# stream's priority unless the graph is instantiated with that flag. 1) the trainer suite's graph
# and priority cases and the decoder suite (its decode-step graphs use the same helper); 2) TinyLlama
# 2 x 512 x 8 and 7B 2 x 512 x 8, --cuda-graphs with the second stream high (the default) vs low
# (+sidelow: every node at the lowest priority, i.e. the graphs before the flag), eager beside them.
# Build first (on the patch's branch): hdpissa_cuda_train_tests hdpissa_llama_decode_cuda_tests
# hdpissa-train hdpissa-eval; pack. Run as: END_S=560 bash scripts/device-calls/c107.sh
source scripts/device-calls/common.sh
O=/tmp/o107; mkdir -p $O
nvidia-smi --query-gpu=name --format=csv,noheader | head -1; cat .devbin/COMMIT
run_cases $O train-graphs hdpissa_cuda_train_tests 200 "--cuda-graphs*,stream priorities*"
run_cases $O decode-tests hdpissa_llama_decode_cuda_tests 120 "*"
throughput $O tiny2 SHAPES=tinyllama MICRO_BATCHES=2 PEFT_METHODS=lora-bf16-compile \
  OURS_CONFIGS="hdpissa-K1+graphs hdpissa-K1+graphs+sidelow hdpissa-K1 lora+graphs lora+graphs+sidelow"
throughput $O s7b2 SHAPES=llama2-7b MICRO_BATCHES=2 PEFT_METHODS_7B=none \
  OURS_CONFIGS_7B="hdpissa-K1+graphs hdpissa-K1+graphs+sidelow hdpissa-K1"
tar czf $OUT/c107-logs.tgz -C $O . 2>/dev/null
echo "done at $(el) s"
