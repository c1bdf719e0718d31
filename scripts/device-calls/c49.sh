# call 49 (written in session 22 for a later session; needs .devbin/bench_dwu_lowrank, packed with
# c48's binaries): where HD-PiSSA's DWU step goes. Session 22's profile: HD-PiSSA's optimizer step
# 5.87 ms per TinyLlama 8 x 512 step (LoRA's now 0.35) and ~30 ms at 7B; bench_dwu_lowrank (session
# 20, c34) had the low-rank kernel at ~0.33 of the copy rate at kd = 32 and 0.61 at kd = 0 (W read,
# SR rule, W write only). This call: the bench's kd scan at every shape, then ncu (full set) on the
# 7B gate/up shape at kd = 32 and kd = 0 and on TinyLlama's k/v shape (32 blocks: latency-bound?),
# for the stall reasons, achieved occupancy, issue slots and DRAM throughput.
# Run as: bash scripts/device-calls/c49.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o49; mkdir -p $O
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null || ls -d /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
echo "ncu: ${NCU:-none}"
timeout 150 .devbin/bench_dwu_lowrank --reps 20 --policy sr > $O/lowrank.txt 2>&1; echo "bench rc $? at $(el) s"
grep -v JSON $O/lowrank.txt; cp $O/lowrank.txt $OUT/
if [[ -n "$NCU" ]]; then
  for spec in "11008,4096:32" "11008,4096:0" "256,2048:32"; do
    shape=${spec%%:*}; kd=${spec##*:}
    (( END - $(el) > 60 )) || break
    timeout 120 "$NCU" --clock-control none -k regex:dwu_lowrank --launch-skip 3 --launch-count 1 --set full \
      .devbin/bench_dwu_lowrank --shape $shape --kd $kd --policy sr --rows-per-thread 8 --reps 2 > "$O/ncu-${shape/,/x}-kd$kd.txt" 2>&1
    echo "ncu $shape kd $kd rc $? at $(el) s"
    grep -E "Duration|Memory Throughput|DRAM Throughput|Compute \(SM\) Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Issue Slots Busy|No Eligible|Warp Cycles Per Issued|Stall" "$O/ncu-${shape/,/x}-kd$kd.txt" | head -24
  done
fi
tar czf $OUT/c49-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
