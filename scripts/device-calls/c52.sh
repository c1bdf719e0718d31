# call 52 (written in session 23 for the next session; branch next/s24; .devpack: its binaries —
# check .devbin/COMMIT): what folding a layer's linears would save, before any trainer change.
# 1) the CUDA library suite (launch_dwu_lowrank's two-stage error is new; the low-rank kernel's
#    host replay now also with two row blocks walking every other tile) and the trainer suite;
#    then the low-rank kernel, main's against next/s24's (the W rows' own cp.async group);
# 2) bench_fused_linears: per group (q/k/v, o, gate/up, down) at TinyLlama and 7B, 4096 and 1024
#    tokens: the trainer's GEMM set today (n frozen forward GEMMs, n dX GEMMs, u, n t, gA, n gB)
#    against the folded one (one forward GEMM with the A rows, one dX GEMM with block-diagonal B
#    columns, gA, n gB), and the frozen GEMMs fused against separate;
# 3) bench_adapter_grads (the thin GEMMs against their bytes floor, for reference);
# 4) TinyLlama 8 x 512: LoRA and PiSSA (not re-measured since c47) and HD-PiSSA K1, PEFT + compile.
# Decide from 2): if "folded" saves ≥ 1.5 ms per TinyLlama 8 x 512 micro-batch (≈ 3 % of the step),
# lay the model's linears out per group with the A rows after the W rows (the method's compute copy
# of A a view into them) and W with ld = in + n·r (B in the extra columns): docs/status.md, session 23.
# Run as: bash scripts/device-calls/c52.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o52; mkdir -p $O
run_suites $O hdpissa_cuda_tests:120 hdpissa_cuda_train_tests:150
grep -h -E "ERROR|FAILED" $O/suites/*.log 2>/dev/null | head -20
{ # the low-rank kernel: main's (bench_dwu_lowrank-base) against next/s24's (S = 1 with the W rows in
  # their own cp.async group, so they overlap the products again: review of session 23)
  echo "== main"; timeout 40 .devbin/bench_dwu_lowrank-base --reps 20 --policy sr --rows-per-thread 8 --kd 32
  echo "== next/s24"; timeout 40 .devbin/bench_dwu_lowrank --reps 20 --policy sr --rows-per-thread 8 --kd 32
} > $O/lowrank.txt 2>&1
grep -E "==|224|154" $O/lowrank.txt; cp $O/lowrank.txt $OUT/
timeout 120 .devbin/bench_fused_linears --reps 20 > $O/fused-linears.txt 2>&1; echo "fused linears rc $? at $(el) s"
grep -v JSON $O/fused-linears.txt; cp $O/fused-linears.txt $OUT/
timeout 60 .devbin/bench_adapter_grads --reps 20 > $O/adapter-grads.txt 2>&1; echo "adapter grads rc $? at $(el) s"
grep -v JSON $O/adapter-grads.txt | tail -3; cp $O/adapter-grads.txt $OUT/
if (( END - $(el) > 170 )); then
  OUT=$O/t WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=tinyllama MICRO_BATCHES=8 OURS_STEPS=8 \
    OURS_CONFIGS="hdpissa-K1 lora pissa" PEFT_METHODS=lora-bf16-compile DEADLINE_S=$(( END - 10 - $(el) )) \
    scripts/throughput.sh > $O/t.txt 2>&1
  cp $O/t/throughput.md $OUT/tinyllama-mb8.md 2>/dev/null; echo "tinyllama done at $(el) s"
  grep -E "^\| (\*\*)?(ours|peft)" $O/t/throughput.md | head -4
fi
tar czf $OUT/c52-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
