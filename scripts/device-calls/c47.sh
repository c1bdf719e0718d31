# call 47 (session 22): LoRA / PiSSA's optimizer step in two launches (88c31a2: DataParallelUpdate's
# batched Adam applying p -= delta in place, CudaConvertBatch for the compute copies and stacked A).
# Session 21's profile had LoRA's optimizer step at 5.76 ms per TinyLlama step (session 18: 2.90)
# for ~0.1 ms of work: ~1,000 small launches (an Adam pass and an axpy per parameter, a conversion
# per factor, a copy per stacked A) issued after the step's non-finite read-back.
# 1) the CUDA library suite (new: test_batched_step.cu) and the trainer suite;
# 2) TinyLlama 8 x 512 profile, LoRA and HD-PiSSA K1 (the optimizer row);
# 3) A/B against .devbin/hdpissa-train-base (47964f5, session 22's measured main) with PEFT + compile:
#    TinyLlama 8 x 512 (lora, pissa, hdpissa-K1), 7B 8 x 512 (lora), TinyLlama 2 x 512 (lora) as
#    the deadline allows.
# Run as: bash scripts/device-calls/c47.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o47; mkdir -p $O
run_suites $O hdpissa_cuda_tests:150 hdpissa_cuda_train_tests:130
grep -h -E "ERROR|FAILED" $O/suites/*.log 2>/dev/null | head -20
OUT=$O/p WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPE=tinyllama MB=8 GA=2 STEPS=4 CONFIGS="lora hdpissa-K1" \
  BARE_ARGS="--prompt-fraction 0.2" timeout 100 scripts/profile-step.sh > $O/p.txt 2>&1
echo "profile rc $? at $(el) s"
{ cat $O/p/profile.md; for f in $O/p/*.log; do echo "$(basename $f .log): $(grep -h "host time" $f)"; done; } > $OUT/profile-tiny8.md 2>/dev/null
cat $OUT/profile-tiny8.md
for spec in "tinyllama:8:lora pissa hdpissa-K1:lora pissa" "llama2-7b:8:lora:lora" "tinyllama:2:lora:lora"; do
  IFS=: read -r shape mb ours base <<< "$spec"
  (( END - $(el) > 140 )) || break
  OUT=$O/t-$shape-$mb WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=$shape MICRO_BATCHES=$mb OURS_STEPS=8 \
    OURS_CONFIGS="$ours" BASELINE_BIN=$PWD/.devbin/hdpissa-train-base BASELINE_LABEL=base BASELINE_CONFIGS="$base" \
    PEFT_METHODS=lora-bf16-compile DEADLINE_S=$(( END - 10 - $(el) )) scripts/throughput.sh > $O/t-$shape-$mb.txt 2>&1
  cp $O/t-$shape-$mb/throughput.md $OUT/$shape-mb$mb.md 2>/dev/null; echo "$shape mb$mb done at $(el) s"
  grep -E "^\| (\*\*)?(ours|peft)" $O/t-$shape-$mb/throughput.md | head -8
done
tar czf $OUT/c47-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
