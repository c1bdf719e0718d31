# call 51 (session 23, branch next/lowrank2 with the SR stream 2; .devpack: its binaries, next/s23's
# (22b44eb) as hdpissa-train-base / bench_dwu_lowrank-base): the SR stream hashed once per four
# elements (sr_bits_keyed; the low-rank kernel's vector path hashes once per group), one tile stage
# by default.
# 1) the CUDA library suite (the kernel's host replay against the CPU's new stream, stages 0 and 2,
#    an SR base not a multiple of 4) and the trainer suite (GPU against CPU under bf16-sr);
# 2) bench_dwu_lowrank, new and base, bf16 SR, 8 rows per thread;
# 3) TinyLlama 8 x 512 (bf16) and 7B 8 x 512 (--compute fp8) A/B of HD-PiSSA K1 against the base
#    trainer, PEFT + compile in the same call.
# Run as: END_S=480 bash scripts/device-calls/c51.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o51; mkdir -p $O
run_suites $O hdpissa_cuda_tests:120 hdpissa_cuda_train_tests:150
grep -h -E "ERROR|FAILED" $O/suites/*.log 2>/dev/null | head -20
{
  echo "== base (22b44eb)"; timeout 40 .devbin/bench_dwu_lowrank-base --reps 20 --policy sr --rows-per-thread 8 --kd 32
  echo "== new (stream 2, stages 1)"; timeout 40 .devbin/bench_dwu_lowrank --reps 20 --policy sr --rows-per-thread 8
} > $O/lowrank.txt 2>&1
echo "bench done at $(el) s"; grep -v JSON $O/lowrank.txt | grep -E "==|224|154|kd 32:"; cp $O/lowrank.txt $OUT/
for spec in "tinyllama:hdpissa-K1" "llama2-7b:hdpissa-K1+fp8"; do
  shape=${spec%%:*}; cfg=${spec##*:}
  (( END - $(el) > 150 )) || break
  OUT=$O/t-$shape WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=$shape MICRO_BATCHES=8 OURS_STEPS=8 \
    OURS_CONFIGS="$cfg" BASELINE_BIN=$PWD/.devbin/hdpissa-train-base BASELINE_LABEL=s23 \
    BASELINE_CONFIGS="$cfg" PEFT_METHODS=lora-bf16-compile DEADLINE_S=$(( END - 10 - $(el) )) \
    scripts/throughput.sh > $O/t-$shape.txt 2>&1
  cp $O/t-$shape/throughput.md $OUT/$shape-mb8.md 2>/dev/null; echo "$shape done at $(el) s"
  grep -E "^\| (\*\*)?(ours|peft)" $O/t-$shape/throughput.md | head -3
done
tar czf $OUT/c51-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
