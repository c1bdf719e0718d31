# call 26 (session 18): the fused adapter-gradient path with the wgrad tail fixed (the last block
# of a strip summed its S partials with one dependent 4-byte load per add; now 8 entries per thread,
# 16-byte loads, several slices in flight: the same sum order, so the same bits) and the loss chunk
# default raised to 1024 rows at 32k vocab (c24/c25). Suites first (llama CUDA: the kernels against
# float64 / cuBLAS path and the new chunk rule; trainer: fused vs cuBLAS losses), then TinyLlama
# 8 x 512 and 2 x 512: hdpissa-K1 (new default), +fused, +chunk512 (the old chunk) against PEFT +
# compile, then the section profile of TinyLlama 8 x 512 with the new default, if time is left.
# Run as: bash scripts/device-calls/c26.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o26; mkdir -p $O
run_suites $O hdpissa_llama_cuda_tests:40
if ! grep -q "hdpissa_llama_cuda_tests rc 0" $O/suites.txt; then
  grep -h -E "ERROR|FAILED" $O/suites/*.log | head -20
  tar czf $OUT/c26-logs.tgz -C $O . 2>/dev/null; echo "llama CUDA suite failed: stopping"; exit 1
fi
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null)
[[ -n "$NCU" ]] && timeout 60 "$NCU" --clock-control none -k regex:"proj_kernel|wgrad_kernel" --launch-count 2 \
  --section SpeedOfLight --section Occupancy .devbin/hdpissa_llama_cuda_tests --test-case="fused adapter*" > $O/ncu-fused.txt 2>&1
grep -E "^  [a-z_]+\(|Duration|Achieved Occupancy" $O/ncu-fused.txt | head -8
run_suites $O hdpissa_cuda_train_tests:90
grep -h -E "loss cuBLAS path" $O/suites/*.log 2>/dev/null | head -6
for mb in 8 2; do
  (( END - $(el) > 110 )) || break
  OUT=$O/t$mb WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=tinyllama MICRO_BATCHES=$mb \
    OURS_CONFIGS="hdpissa-K1 hdpissa-K1+fused hdpissa-K1+chunk512 lora" PEFT_METHODS=lora-bf16-compile \
    DEADLINE_S=$(( END - 5 - $(el) )) scripts/throughput.sh > $O/t$mb.txt 2>&1
  cp $O/t$mb/throughput.md $OUT/tiny-mb$mb.md 2>/dev/null; echo "tiny mb$mb done at $(el) s"
  grep -E "^\| (\*\*)?(ours|peft)" $O/t$mb/throughput.md | head -5
done
if (( END - $(el) > 60 )); then
  OUT=$O/p8 WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPE=tinyllama MB=8 GA=2 CONFIGS="hdpissa-K1" \
    timeout $(( END - 5 - $(el) )) scripts/profile-step.sh > $O/p8.txt 2>&1; echo "profile rc $? at $(el) s"
  cp $O/p8/*.md $OUT/ 2>/dev/null
fi
tar czf $OUT/c26-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
