# call 31 (session 19): 0) the CUDA library and trainer suites after the closing review's test
# changes (the fp32-gradient test's reference from the GPU's own thin products, AdapterLinear with
# the forward's X Aᵀ, gemm_f32 at k = 0; ±inf, NaN and ±max W in the low-rank DWU kernel's host
# replay); 1) bench_adapter_grads with the new default path (the gradient GEMMs writing
# fp32 sums) beside the old bf16 + add path and the fused kernels, at every linear shape; 2) TinyLlama
# 2 x 512 x 8: HD-PiSSA K1 and LoRA against PEFT + compile; 3) the TinyLlama 8 x 512 x 2 section
# profile (bare model vs HD-PiSSA K1) with this session's code.
# Run as: bash scripts/device-calls/c31.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o31; mkdir -p $O
run_suites $O hdpissa_cuda_tests:100 hdpissa_cuda_train_tests:100
grep -h -E "ERROR|FAILED" $O/suites/*.log | head -20
timeout 90 .devbin/bench_adapter_grads --reps 20 > $O/adapter-grads.txt 2>&1; echo "bench rc $? at $(el) s"
grep -v JSON $O/adapter-grads.txt; cp $O/adapter-grads.txt $OUT/
if (( END - $(el) > 150 )); then
  OUT=$O/t2 WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=tinyllama MICRO_BATCHES=2 \
    OURS_CONFIGS="hdpissa-K1 lora" PEFT_METHODS=lora-bf16-compile \
    DEADLINE_S=$(( END - 60 - $(el) )) scripts/throughput.sh > $O/t2.txt 2>&1
  cp $O/t2/throughput.md $OUT/tiny-mb2.md 2>/dev/null; echo "tiny mb2 done at $(el) s"
  grep -E "^\| (\*\*)?(ours|peft)" $O/t2/throughput.md | head -3
fi
if (( END - $(el) > 50 )); then
  OUT=$O/prof WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPE=tinyllama MB=8 GA=2 CONFIGS="hdpissa-K1" \
    timeout $(( END - 5 - $(el) )) scripts/profile-step.sh > $O/prof.txt 2>&1
  echo "profile rc $? at $(el) s"; cp $O/prof/profile.md $OUT/ 2>/dev/null; cat $O/prof/profile.md
fi
tar czf $OUT/c31-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
