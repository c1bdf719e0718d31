# call 48 (written in session 22 for the next session, on branch next/s23 = main + next/fp8-amax +
# next/flat-grads; .devpack holds its binaries, main's 88c31a2 trainer as .devbin/hdpissa-train-base).
#  - fp8-amax: Bf16WStorage::amax, the FP8 W amax kept by the DWU's kernels (one read of W fewer per
#    step with --compute fp8 under a bf16 W policy).
#  - flat-grads: the DWU's gradients in one flat buffer (zero_grad one fill instead of 308 per
#    TinyLlama step), and the DWU / LoRA / PiSSA shared-input backward adding the stacked gA GEMM
#    straight into the adjacent fp32 sums (no per-member axpy: 110 launches fewer per micro-batch).
# 1) the CUDA library suite and the trainer suite (new: --compute fp8 under bf16 policies with the
#    stale check, the 2Kr = 160 DWU; every existing GPU-vs-CPU trainer check runs the flat gradients);
# 2) TinyLlama 8 x 512 and 2 x 512 A/B (hdpissa-K1, lora) against main's binary with PEFT + compile;
#    hdpissa-K1+fused (HDPISSA_FUSED_ADAPTER_GRADS=1) too: never timed at 2 x 512, where the thin
#    cuBLAS GEMMs are latency-bound (it lost 3-5 % at 8 x 512 in session 18).
# c48b.sh: the 7B FP8 A/B and profile.
# Run as: bash scripts/device-calls/c48.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o48; mkdir -p $O
run_suites $O hdpissa_cuda_tests:150 hdpissa_cuda_train_tests:170
grep -h -E "ERROR|FAILED" $O/suites/*.log 2>/dev/null | head -20
for mb in 8 2; do
  (( END - $(el) > 130 )) || break
  OUT=$O/t$mb WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=tinyllama MICRO_BATCHES=$mb OURS_STEPS=8 \
    OURS_CONFIGS="hdpissa-K1 hdpissa-K1+fused lora" BASELINE_BIN=$PWD/.devbin/hdpissa-train-base BASELINE_LABEL=main \
    BASELINE_CONFIGS="hdpissa-K1 lora" PEFT_METHODS=lora-bf16-compile DEADLINE_S=$(( END - 10 - $(el) )) \
    scripts/throughput.sh > $O/t$mb.txt 2>&1
  cp $O/t$mb/throughput.md $OUT/tinyllama-mb$mb.md 2>/dev/null; echo "tinyllama mb$mb done at $(el) s"
  grep -E "^\| (\*\*)?(ours|peft)" $O/t$mb/throughput.md | head -6
done
tar czf $OUT/c48-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
