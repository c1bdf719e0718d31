# call 102 (session 35): c100 and c101 in one call, after two refused starts left too little device
# time for both. Binaries: the decoder and model suites, hdpissa-generate and hdpissa-eval built from
# main at 0d35680 (session 34's closing code); hdpissa_cuda_tests, hdpissa_cuda_train_tests and
# hdpissa-train from next/prio-main (main + the stream priorities). 1) the decoder suite (Auto now
# runs the tensor-core kernel for bf16 GQA: its Auto lines never ran on a GPU) and the model suite;
# 2) the library cases touched by the priorities; 3) the whole trainer suite (the priority case, and
# session 34's RMSNorm griddepcontrol change); 4) the A/B at TinyLlama 2 x 512 x 8; 5) decode-bench
# at TinyLlama against transformers (Auto's mma + 512-key splits end to end) if time is left; first,
# bench_fp8_scaling (cuBLASLt's FP8 scaling modes at the 7B layer GEMMs).
# Run as: END_S=565 bash scripts/device-calls/c102.sh (carry .devpack, .devdata)
# (Run when a config without +sideprio meant the default priority; since the default flip such rows run
# at high priority: use +sidelow for the default-priority rows to repeat this A/B.)
source scripts/device-calls/common.sh
O=/tmp/o102; mkdir -p $O; W=/tmp/hdb; mkdir -p $W
nvidia-smi --query-gpu=name --format=csv,noheader | head -1; cat .devbin/COMMIT
timeout 60 .devbin/bench_fp8_scaling > $OUT/c102-fp8-scaling.txt 2>&1; echo "bench_fp8_scaling rc $? at $(el) s"
grep -v JSON $OUT/c102-fp8-scaling.txt
run_cases $O decode-tests hdpissa_llama_decode_cuda_tests 120 "*"
run_cases $O prio-lib hdpissa_cuda_tests 90 "DwuGemm selection*,DWU with a bf16 W storage*"
run_suites $O hdpissa_llama_cuda_tests:70 hdpissa_cuda_train_tests:230
throughput $O tiny2 SHAPES=tinyllama MICRO_BATCHES=2 PEFT_METHODS=none \
  OURS_CONFIGS="hdpissa-K1 hdpissa-K1+sideprio hdpissa-K1+dwuprio hdpissa-K1+sideprio+dwuprio lora lora+sideprio"
if (( $(el) < END - 100 )); then
  OUT=$O/d PREBUILT=$PWD/.devbin WORK=$W SHAPES="tinyllama" BATCH=64 NEW_TOKENS=256 GSM8K_SHAPES=" " \
    OURS_TIMEOUT=60 HF_TIMEOUT=90 timeout $(( END - 5 - $(el) )) scripts/decode-bench.sh > $O/d.txt 2>&1
  echo "decode-bench rc $? at $(el) s"; cat $O/d/decode-bench.md 2>/dev/null; cp $O/d/decode-bench.md $OUT/c102-decode-bench.md 2>/dev/null
fi
tar czf $OUT/c102-logs.tgz -C $O . 2>/dev/null
echo "done at $(el) s"
