# call 33 (session 20): the shared-input adapter backward (q|k|v and gate|up read X twice per group,
# MutedLinear::backward_shared) — 1) the CUDA library's new test (backward_shared against float64)
# and the whole trainer suite (every GPU trainer run against the CPU's per-linear backward);
# 2) TinyLlama 8 x 512 x 2: HD-PiSSA K1 and LoRA at this commit and at 41a8cf5 (session 19's code,
# the baseline binary) against PEFT LoRA + torch.compile, one table; 3) the loss-section question
# (bare model with 0 and 20 % of every row masked as a prompt) and the trainer's section profile.
# Run as: bash scripts/device-calls/c33.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o33; mkdir -p $O
ARGS="--test-case=*backward_shared*,*fp32 gradients*" run_suites $O hdpissa_cuda_tests:60
run_suites $O hdpissa_cuda_train_tests:130
grep -h -E "ERROR|FAILED" $O/suites/*.log | head -20
if (( END - $(el) > 200 )); then
  OUT=$O/t8 WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=tinyllama MICRO_BATCHES=8 \
    OURS_CONFIGS="hdpissa-K1 lora" BASELINE_BIN=$PWD/.devbin/hdpissa-train-41a8cf5 BASELINE_LABEL=41a8cf5 \
    BASELINE_CONFIGS="hdpissa-K1" PEFT_METHODS=lora-bf16-compile \
    DEADLINE_S=$(( END - 90 - $(el) )) scripts/throughput.sh > $O/t8.txt 2>&1
  cp $O/t8/throughput.md $OUT/tiny-mb8.md 2>/dev/null; echo "tiny mb8 done at $(el) s"
  grep -E "^\| (\*\*)?(ours|peft)" $O/t8/throughput.md | head -6
fi
for pf in 0 0.2; do
  (( END - $(el) > 75 )) || break
  timeout 30 .devbin/bench_llama_cuda --shape tinyllama --batch 8 --seq 512 --steps 10 --warmup 3 \
    --prompt-fraction $pf > $O/bare-pf$pf.txt 2>&1
  echo "bare prompt-fraction $pf rc $? at $(el) s"; grep -E "targets|loss|profiled" $O/bare-pf$pf.txt | head -8
done
if (( END - $(el) > 45 )); then
  OUT=$O/prof WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPE=tinyllama MB=8 GA=2 CONFIGS="hdpissa-K1" \
    BARE_ARGS="--prompt-fraction 0.2" timeout $(( END - 8 - $(el) )) scripts/profile-step.sh > $O/prof.txt 2>&1
  echo "tiny profile rc $? at $(el) s"; cat $O/prof/profile.md; cp $O/prof/profile.md $OUT/profile-tiny.md 2>/dev/null
fi
cp $O/bare-pf*.txt $OUT/ 2>/dev/null; tar czf $OUT/c33-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
