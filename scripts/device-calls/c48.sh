# call 48 (written in session 22 for the next session, on branch next/fp8-amax; build and pack there
# first: hdpissa-train hdpissa_cuda_train_tests hdpissa_cuda_tests, plus main's trainer as
# .devbin/hdpissa-train-base): Bf16WStorage::amax, the FP8 W amax kept by the DWU's kernels.
# 1) the CUDA library suite (the storage tests of every apply path and the low-rank kernel's test
#    now check the amax) and the trainer suite (new: hdpissa / lora-dwu --compute fp8 under bf16-sr
#    and bf16-compensated, every FP8 copy equal to a fresh quantisation);
# 2) 7B 8 x 512 --compute fp8, HD-PiSSA K1 (bf16-sr, the default) against main's binary and PEFT +
#    compile (expected: the optimizer step -4.5 ms of ~43, ~+1 % tokens/s);
# 3) the 7B FP8 profile (the optimizer row) if time is left.
# Run as: bash scripts/device-calls/c48.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o48; mkdir -p $O
run_suites $O hdpissa_cuda_tests:150 hdpissa_cuda_train_tests:150
grep -h -E "ERROR|FAILED" $O/suites/*.log 2>/dev/null | head -20
if (( END - $(el) > 160 )); then
  OUT=$O/t WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=llama2-7b MICRO_BATCHES=8 OURS_STEPS=8 \
    OURS_CONFIGS="hdpissa-K1+fp8" BASELINE_BIN=$PWD/.devbin/hdpissa-train-base BASELINE_LABEL=main \
    BASELINE_CONFIGS="hdpissa-K1+fp8" PEFT_METHODS=lora-bf16-compile DEADLINE_S=$(( END - 10 - $(el) )) \
    scripts/throughput.sh > $O/t.txt 2>&1
  cp $O/t/throughput.md $OUT/llama2-7b-mb8-fp8.md 2>/dev/null; echo "7B fp8 done at $(el) s"
  grep -E "^\| (\*\*)?(ours|peft)" $O/t/throughput.md | head -6
fi
t=$(( END - 5 - $(el) )); (( t > 120 )) && t=120
if (( t > 60 )); then
  OUT=$O/p WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPE=llama2-7b MB=8 GA=2 STEPS=3 CONFIGS="hdpissa-K1" EXTRA="--compute fp8" \
    timeout $t scripts/profile-step.sh > $O/p.txt 2>&1
  echo "profile rc $? at $(el) s"; cp $O/p/profile.md $OUT/profile-7b-fp8.md 2>/dev/null; cat $O/p/profile.md 2>/dev/null
fi
tar czf $OUT/c48-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
