# call 14 (session 16): the fused attention kernels' variants (flash_attn.cuh: two query m-tiles per
# forward block, the dK/dV kernel's prefetch) — their bitwise test, their speed alone against
# torch SDPA (every backend) at issue 20's shapes, one ncu look at the forward, then the bare model
# step at both shapes with the new defaults. Binaries built here at the working tree, carried in
# .devflash (bench_flash_attn, hdpissa_llama_cuda_tests, bench_llama_cuda).
# Run as: bash scripts/device-calls/c14.sh   (carry [".devflash"])
set -uo pipefail
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
source scripts/device-env.sh 2>/dev/null || true
B=$PWD/.devflash; O=/tmp/o14; mkdir -p $O
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader | tee $O/gpu.txt
timeout 120 $B/hdpissa_llama_cuda_tests -tc='*flash*' > $O/flash-tests.txt 2>&1; echo "flash tests rc $? at $(el) s" | tee -a $O/flash-tests.txt
tail -4 $O/flash-tests.txt
for b in 8 2; do
  timeout 60 $B/bench_flash_attn --batch $b > $O/flash-bench-b$b.txt 2>&1; echo "rc $?" >> $O/flash-bench-b$b.txt
  timeout 90 python3 bench/e2e/sdpa_bench.py --batch $b > $O/sdpa-b$b.txt 2>&1; echo "rc $?" >> $O/sdpa-b$b.txt
  cat $O/flash-bench-b$b.txt $O/sdpa-b$b.txt
done
echo "benches done at $(el) s"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
if [[ -n "$NCU" ]]; then
  timeout 120 $NCU --clock-control none -k regex:fwd_kernel --launch-skip 0 --launch-count 2 \
    --section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats \
    $B/bench_flash_attn --shape 7b --reps 1 > $O/ncu-fwd.txt 2>&1
  echo "ncu rc $? at $(el) s"; grep -E "fwd_kernel|Duration|Achieved Occupancy|Theoretical Occupancy|Registers Per|Compute \(SM\) Throughput|Memory Throughput|Stall|Warp Cycles Per Issued" $O/ncu-fwd.txt | head -40
fi
for sh in llama2-7b tinyllama; do
  timeout 150 $B/bench_llama_cuda --shape $sh --batch 8 --steps 10 > $O/bare-$sh-b8.txt 2>&1; echo "rc $?" >> $O/bare-$sh-b8.txt
  grep -E "median|achieved|attention|linears|norms|loss|rc " $O/bare-$sh-b8.txt
done
echo "done at $(el) s"
tar czf $OUT/c14.tgz -C $O .; cp $O/flash-bench-b8.txt $O/sdpa-b8.txt $OUT/ 2>/dev/null; ls -la $OUT
