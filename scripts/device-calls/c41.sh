# call 41 (session 21, branch next/s21 + the vectorised FP8 quantise-transpose + host times in
# --profile; packed: hdpissa-train bench_llama_cuda hdpissa_cuda_train_tests hdpissa_cuda_tests, main's
# trainer (2067f66) as .devbin/hdpissa-train-main):
# 1) the FP8 suites (quantise-transpose exact against the host on partial tiles; the trainer's FP8
#    copies current after every step);
# 2) TinyLlama 8 x 512 profile, bare vs HD-PiSSA K1, with the host's time between the section marks
#    (is the trainer's loss dX part, 3.26 vs 0.61 ms in c40, the GPU waiting for the host?);
# 3) LLaMA-2-7B 8 x 512 x 2: HD-PiSSA K1 and LoRA, bf16 and --compute fp8, at this branch and at main
#    (FP8 W refresh; LoRA's shared-input path) against PEFT LoRA + torch.compile in the same call;
# 4) the 7B FP8 profile (the optimizer row: 55.12 ms in c34, 30.41 in bf16).
# Run as: bash scripts/device-calls/c41.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o41; mkdir -p $O
ARGS="-tc=*fp8*" run_suites $O hdpissa_cuda_tests:60 hdpissa_cuda_train_tests:60
grep -h -E "ERROR|FAILED" $O/suites/*.log | head -20
OUT=$O/pt WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPE=tinyllama MB=8 GA=2 STEPS=4 CONFIGS="hdpissa-K1" \
  BARE_ARGS="--prompt-fraction 0.2" timeout 90 scripts/profile-step.sh > $O/pt.txt 2>&1
echo "tiny profile rc $? at $(el) s"; cat $O/pt/profile.md; grep -h "host time" $O/pt/*.log
{ cat $O/pt/profile.md; grep -h "host time" $O/pt/*.log; } > $OUT/profile-tiny.md 2>/dev/null
OUT=$O/s8 WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=llama2-7b MICRO_BATCHES=8 OURS_STEPS=8 \
  OURS_CONFIGS="hdpissa-K1+fp8 hdpissa-K1 lora+fp8 lora" BASELINE_BIN=$PWD/.devbin/hdpissa-train-main \
  BASELINE_LABEL=main BASELINE_CONFIGS="hdpissa-K1+fp8 lora" PEFT_METHODS=lora-bf16-compile \
  DEADLINE_S=$(( END - 75 - $(el) )) scripts/throughput.sh > $O/s8.txt 2>&1
cp $O/s8/throughput.md $OUT/7b-mb8.md 2>/dev/null; grep -E "rc |total" $O/s8/throughput.log; echo "7b mb8 done at $(el) s"
grep -E "^\| (\*\*)?(ours|peft)" $O/s8/throughput.md | head -8
if (( END - $(el) > 45 )); then
  OUT=$O/p7f WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPE=llama2-7b MB=8 GA=2 STEPS=4 CONFIGS="hdpissa-K1" \
    EXTRA="--compute fp8" BARE_ARGS="--steps 2 --warmup 1" timeout $(( END - 8 - $(el) )) scripts/profile-step.sh > $O/p7f.txt 2>&1
  echo "7b fp8 profile rc $? at $(el) s"; cat $O/p7f/profile.md; grep -h "host time" $O/p7f/*.log
  { cat $O/p7f/profile.md; grep -h "host time" $O/p7f/*.log; } > $OUT/profile-7b-fp8.md 2>/dev/null
fi
tar czf $OUT/c41-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
