# call 40 (session 21, branch next/s21 = main + next/loss-parts + next/lora-shared; packed there:
# hdpissa-train bench_llama_cuda hdpissa_cuda_train_tests hdpissa_cuda_tests, with main's trainer
# (2067f66) kept as .devbin/hdpissa-train-main): c38 and c39 of session 20 in one call.
# 1) the trainer suite and the library suite (LoRA / PiSSA shared-input paths against the CPU,
#    AdapterLinear and MutedLinear parity); 2) TinyLlama 8 x 512: LoRA and PiSSA at this branch
#    and at main against PEFT + compile; 3) the loss section in its parts, bare vs trainer.
# Run as: bash scripts/device-calls/c40.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o40; mkdir -p $O
run_suites $O hdpissa_cuda_train_tests:130 hdpissa_cuda_tests:150
grep -h -E "ERROR|FAILED" $O/suites/*.log | head -20
if (( END - $(el) > 200 )); then
  OUT=$O/t8 WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=tinyllama MICRO_BATCHES=8 \
    OURS_CONFIGS="lora pissa hdpissa-K1" BASELINE_BIN=$PWD/.devbin/hdpissa-train-main BASELINE_LABEL=main \
    BASELINE_CONFIGS="lora pissa" PEFT_METHODS=lora-bf16-compile \
    DEADLINE_S=$(( END - 90 - $(el) )) scripts/throughput.sh > $O/t8.txt 2>&1
  cp $O/t8/throughput.md $OUT/tiny-mb8.md 2>/dev/null; echo "tiny mb8 done at $(el) s"
  grep -E "^\| (\*\*)?(ours|peft)" $O/t8/throughput.md | head -8
fi
if (( END - $(el) > 50 )); then
  OUT=$O/prof-tiny WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPE=tinyllama MB=8 GA=2 STEPS=4 CONFIGS="hdpissa-K1 lora" \
    BARE_ARGS="--prompt-fraction 0.2" timeout $(( END - 5 - $(el) )) scripts/profile-step.sh > $O/prof-tiny.txt 2>&1
  echo "tiny profile rc $? at $(el) s"; cat $O/prof-tiny/profile.md; cp $O/prof-tiny/profile.md $OUT/profile-tiny.md 2>/dev/null
fi
tar czf $OUT/c40-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
