# call 24 (session 18): after c23's profile. 1) suites: the CUDA library (the low-rank DWU kernel's
# 4-rows-per-thread tiling against the host replay, bit for bit), llama CUDA (the fused adapter
# kernels, now 8 warps per proj block and ~8 wgrad blocks per SM), trainer; 2) bench_dwu_lowrank
# at kd 32 and 0, both tilings; 3) Nsight Compute on the fused kernels (occupancy); 4) TinyLlama
# 8 x 512: hdpissa-K1, +fused, +rows4 (HDPISSA_CUDA_DWU_ROWS=4), +chunk1024 (HDPISSA_LOSS_CHUNK_ROWS) against PEFT + compile;
# 5) TinyLlama 2 x 512 the same, if time is left.
# Run as: bash scripts/device-calls/c24.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o24; mkdir -p $O
run_suites $O hdpissa_cuda_tests:150 hdpissa_llama_cuda_tests:40
if ! grep -q "hdpissa_llama_cuda_tests rc 0" $O/suites.txt || ! grep -q "hdpissa_cuda_tests rc 0" $O/suites.txt; then
  grep -h -E "ERROR|FAILED|CHECK\(" $O/suites/*.log | head -20
  tar czf $OUT/c24-logs.tgz -C $O . 2>/dev/null; echo "a suite failed: stopping"; exit 1
fi
timeout 60 .devbin/bench_dwu_lowrank --reps 20 --kd 32 > $O/lowrank32.txt 2>&1; echo "bench rc $? at $(el) s"
timeout 60 .devbin/bench_dwu_lowrank --reps 20 --kd 0 --policy sr > $O/lowrank0.txt 2>&1
grep -v JSON $O/lowrank32.txt | grep -E "bf16-sr|7B"; grep -v JSON $O/lowrank0.txt | grep -E "x 4096 |x 11008"
cp $O/lowrank32.txt $O/lowrank0.txt $OUT/
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null)
[[ -n "$NCU" ]] && timeout 90 "$NCU" --clock-control none -k regex:"proj_kernel|wgrad_kernel" --launch-count 2 \
  --section SpeedOfLight --section Occupancy --section LaunchStats .devbin/hdpissa_llama_cuda_tests --test-case="fused adapter*" \
  > $O/ncu-fused.txt 2>&1
grep -E "^  [a-z_]+\(|Duration|Achieved Occupancy" $O/ncu-fused.txt | head -8
run_suites $O hdpissa_cuda_train_tests:90
grep -h -E "loss cuBLAS path" $O/suites/*.log 2>/dev/null | head -6
for mb in 8 2; do
  (( END - $(el) > 110 )) || break
  OUT=$O/t$mb WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=tinyllama MICRO_BATCHES=$mb \
    OURS_CONFIGS="hdpissa-K1 hdpissa-K1+fused hdpissa-K1+rows4 hdpissa-K1+chunk1024" PEFT_METHODS=lora-bf16-compile \
    DEADLINE_S=$(( END - 5 - $(el) )) scripts/throughput.sh > $O/t$mb.txt 2>&1
  cp $O/t$mb/throughput.md $OUT/tiny-mb$mb.md 2>/dev/null; echo "tiny mb$mb done at $(el) s"
  grep -E "^\| (\*\*)?(ours|peft)" $O/t$mb/throughput.md | head -4
done
tar czf $OUT/c24-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
