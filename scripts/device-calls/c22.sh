# call 22 (session 17): c21's first attempt lost its machine (no output came back) and most of the
# session's device time; this is c21 cut down: the llama CUDA suite (the fused adapter-gradient
# kernel test), compute-sanitizer memcheck on that test, the trainer suite (fused vs cuBLAS path in
# the trainer), then TinyLlama 8 x 512 with the fused path on (+fused, opt-in) and off against
# PEFT + compile, if time is left.
# Not run: two attempts in session 17 lost their machines and the device time ran out. Next session
# (it is the first call to make, after a rebuild and repack; the full c21.sh if time allows):
# Run as: bash scripts/device-calls/c22.sh   (carry [".devpack", ".devdata"]; END_S=230 fits a 6-minute remainder)
source scripts/device-calls/common.sh
O=/tmp/o22; mkdir -p $O
run_suites $O hdpissa_llama_cuda_tests:40
timeout 30 .devbin/hdpissa_llama_cuda_tests --test-case="fused adapter*" -s 2>&1 | grep -E "fused adapter grads|ERROR|CHECK" | head -20
# out-of-bounds accesses of the new kernels (the test's shapes include partial strips and odd N)
CS=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
[[ -n "$CS" ]] && timeout 90 "$CS" --tool memcheck --error-exitcode 9 .devbin/hdpissa_llama_cuda_tests \
  --test-case="fused adapter*" > $O/memcheck.txt 2>&1; echo "memcheck rc $? (${CS:-no compute-sanitizer})"; tail -3 $O/memcheck.txt
if ! grep -q "hdpissa_llama_cuda_tests rc 0" $O/suites.txt; then
  tar czf $OUT/c22-logs.tgz -C $O . 2>/dev/null; echo "llama CUDA suite failed: stopping"; exit 1
fi
run_suites $O hdpissa_cuda_train_tests:90
grep -h -E "loss cuBLAS path" $O/suites/*.log 2>/dev/null | head -8
if (( END - $(el) > 100 )); then
  OUT=$O/t8 WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=tinyllama MICRO_BATCHES=8 \
    OURS_CONFIGS="hdpissa-K1+fused hdpissa-K1" PEFT_METHODS=lora-bf16-compile \
    DEADLINE_S=$(( END - 5 - $(el) )) scripts/throughput.sh > $O/t8.txt 2>&1
  cp $O/t8/throughput.md $OUT/tiny-mb8.md 2>/dev/null; grep -E "rc |total" $O/t8/throughput.log; echo "tiny mb8 done at $(el) s"
  grep -E "^\| (\*\*)?(ours|peft)" $O/t8/throughput.md | head -4
fi
tar czf $OUT/c22-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
