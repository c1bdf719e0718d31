# call 56 (session 24, the last ≈ 5 minutes of device time; .devpack: next/review24's hdpissa-train,
# hdpissa_llama_cuda_tests and hdpissa_cuda_train_tests): the review's changes — saved activations
# on 128-byte boundaries, no SwiGLU in a checkpointing recompute, the hints dropped at each pass's
# start — under the model and trainer suites (their bit-identity checks: checkpointing,
# --keep-swiglu, the producer-kept amax on more cases).
# Run as: bash scripts/device-calls/c56.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o56; mkdir -p $O
run_suites $O hdpissa_llama_cuda_tests:60 hdpissa_cuda_train_tests:200
grep -h -E "ERROR|FAILED|producer-kept amax:|peak device bytes without" $O/suites/*.log 2>/dev/null | head -20
tar czf $OUT/c56-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
