# call 21 (session 17; its one attempt lost the machine, nothing came back — see c22.sh): the fused adapter gradients (examples/llama/include/llama/cuda/adapter_grads.cuh)
# — the llama CUDA suite (its kernel test: float64 reference, cuBLAS path, determinism) and the
# trainer suite (fused vs cuBLAS path inside the trainer) first, nothing else if the llama suite
# fails — then issue 20's TinyLlama 8 x 512 and 7B 8 x 512 rows with the fused path on and off
# (+fused; opt-in) against PEFT + compile in the same call, then the TinyLlama section profile.
# Run as: bash scripts/device-calls/c21.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o21; mkdir -p $O
run_suites $O hdpissa_llama_cuda_tests:60
if ! grep -q "hdpissa_llama_cuda_tests rc 0" $O/suites.txt; then
  tar czf $OUT/c21-logs.tgz -C $O . 2>/dev/null; echo "llama CUDA suite failed: stopping"; exit 1
fi
.devbin/hdpissa_llama_cuda_tests --test-case="fused adapter*" -s 2>&1 | grep -E "MESSAGE|fused adapter grads" | head -12
run_suites $O hdpissa_cuda_train_tests:120
OUT=$O/t8 WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=tinyllama MICRO_BATCHES=8 \
  OURS_CONFIGS="hdpissa-K1+fused hdpissa-K1" PEFT_METHODS=lora-bf16-compile \
  DEADLINE_S=$(( END - 250 - $(el) )) scripts/throughput.sh > $O/t8.txt 2>&1
cp $O/t8/throughput.md $OUT/tiny-mb8.md 2>/dev/null; grep -E "rc |total" $O/t8/throughput.log; echo "tiny mb8 done at $(el) s"
grep -E "^\| (\*\*)?(ours|peft)" $O/t8/throughput.md | head -4
OUT=$O/s8 WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=llama2-7b MICRO_BATCHES=8 \
  OURS_CONFIGS="hdpissa-K1+fused hdpissa-K1" PEFT_METHODS=lora-bf16-compile \
  DEADLINE_S=$(( END - 10 - $(el) )) scripts/throughput.sh > $O/s8.txt 2>&1
cp $O/s8/throughput.md $OUT/7b-mb8.md 2>/dev/null; grep -E "rc |total" $O/s8/throughput.log; echo "7b mb8 done at $(el) s"
grep -E "^\| (\*\*)?(ours|peft)" $O/s8/throughput.md | head -4
mkdir -p $O/runs; cp -r /tmp/tpw/runs/. $O/runs/ 2>/dev/null
tar czf $OUT/c21-logs.tgz -C $O . 2>/dev/null; ls -la $OUT; echo "done at $(el) s"
