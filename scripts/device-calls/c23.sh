# call 23 (session 18): where the low-rank DWU kernel and the fused adapter-gradient kernels lose
# time. c22 (this session) passed the fused kernels' tests and memcheck but measured them slower
# than the cuBLAS path (TinyLlama 8 x 512: 70,655 vs 75,376 tok/s), and the DWU step is ~4x its W
# traffic (docs/cuda.md). 1) bench_dwu_lowrank: the kernel alone at the LLaMA shapes, inner
# dimension 0..64, against the copy rate; 2) Nsight Compute (full set) on one 11008 x 4096 update at
# kd 32 and at kd 0; 3) Nsight Compute on the fused adapter-gradient kernels and the cuBLAS path's
# kernels of the llama suite's "fused adapter*" test (N 4096, in 2048, out 256).
# Run as: bash scripts/device-calls/c23.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o23; mkdir -p $O
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null || ls -d /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
echo "ncu: ${NCU:-none}"
timeout 120 .devbin/bench_dwu_lowrank --reps 20 > $O/lowrank.txt 2>&1; echo "bench rc $? at $(el) s"
grep -v JSON $O/lowrank.txt; cp $O/lowrank.txt $OUT/
if [[ -n "$NCU" ]]; then
  for kd in 32 0; do
    timeout 120 "$NCU" --clock-control none -k regex:dwu_lowrank --launch-skip 3 --launch-count 1 --set full \
      .devbin/bench_dwu_lowrank --shape 11008,4096 --kd $kd --policy sr --reps 2 > $O/ncu-lowrank-kd$kd.txt 2>&1
    echo "ncu lowrank kd $kd rc $? at $(el) s"
  done
  grep -E "Duration|Memory Throughput|DRAM Throughput|Compute \(SM\) Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Issue Slots Busy|No Eligible|Warp Cycles Per Issued" $O/ncu-lowrank-kd32.txt | head -20
  timeout 150 "$NCU" --clock-control none -k regex:"proj_kernel|wgrad_kernel|transpose_into" --launch-count 6 --set full \
    .devbin/hdpissa_llama_cuda_tests --test-case="fused adapter*" > $O/ncu-fused.txt 2>&1; echo "ncu fused rc $? at $(el) s"
  timeout 150 "$NCU" --clock-control none --section SpeedOfLight --launch-count 400 \
    .devbin/hdpissa_llama_cuda_tests --test-case="fused adapter*" > $O/ncu-fused-all.txt 2>&1; echo "ncu fused-all rc $? at $(el) s"
  grep -E "^  [a-zA-Z_].*\(|Duration" $O/ncu-fused.txt | head -24
fi
tar czf $OUT/c23-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
