# call 50 (session 23, branch next/lowrank2; .devpack: its binaries, and next/s23's (22b44eb, = main
# 258cec8's GPU code) as hdpissa-train-base / bench_dwu_lowrank-base): the low-rank DWU kernel with
# cp.async R / L copies, two tile buffers and a one-wave grid (the same bits), and the SR-hash-per-4
# experiment (bench_dwu_lowrank_g4, timing only).
# 1) the CUDA library suite (the kernel's host replay over stages 0/1/2, an SR base not a multiple
#    of 4) and the trainer suite;
# 2) bench_dwu_lowrank: the old kernel (base), the new at stages 1 and 2, the g4 experiment;
# 3) TinyLlama 8 x 512 and 7B 8 x 512 A/B of HD-PiSSA K1 against the base trainer, PEFT + compile.
# Run as: bash scripts/device-calls/c50.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o50; mkdir -p $O
run_suites $O hdpissa_cuda_tests:170 hdpissa_cuda_train_tests:170
grep -h -E "ERROR|FAILED" $O/suites/*.log 2>/dev/null | head -20
{
  echo "== base (22b44eb)"; timeout 40 .devbin/bench_dwu_lowrank-base --reps 20 --policy sr --rows-per-thread 8
  echo "== new, stages 1 and 2"; timeout 60 .devbin/bench_dwu_lowrank --reps 20 --policy sr --rows-per-thread 8 --stages all
  echo "== new, auto, fp32 W"; timeout 30 .devbin/bench_dwu_lowrank --reps 20 --policy fp32 --rows-per-thread 8 --kd 32
  echo "== g4 experiment (another SR stream), auto"; timeout 40 .devbin/bench_dwu_lowrank_g4 --reps 20 --policy sr --rows-per-thread 8
} > $O/lowrank.txt 2>&1
echo "bench done at $(el) s"; grep -v JSON $O/lowrank.txt | grep -E "==|224|154|kd (0|32):" ; cp $O/lowrank.txt $OUT/
for shape in tinyllama llama2-7b; do
  (( END - $(el) > 150 )) || break
  OUT=$O/t-$shape WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=$shape MICRO_BATCHES=8 OURS_STEPS=8 \
    OURS_CONFIGS="hdpissa-K1" BASELINE_BIN=$PWD/.devbin/hdpissa-train-base BASELINE_LABEL=s23 \
    BASELINE_CONFIGS="hdpissa-K1" PEFT_METHODS=lora-bf16-compile DEADLINE_S=$(( END - 10 - $(el) )) \
    scripts/throughput.sh > $O/t-$shape.txt 2>&1
  cp $O/t-$shape/throughput.md $OUT/$shape-mb8.md 2>/dev/null; echo "$shape done at $(el) s"
  grep -E "^\| (\*\*)?(ours|peft)" $O/t-$shape/throughput.md | head -4
done
tar czf $OUT/c50-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
