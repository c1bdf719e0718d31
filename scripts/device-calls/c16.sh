# call 16 (session 16): the attention layout kernels' 4-wide forms and the hd-64 flash register
# target in the trainer. Suites first (llama CUDA: the kernels' bitwise tests and the model against
# the CPU; the trainer's GPU-vs-CPU suite; the decoder), then issue 20's rows against PEFT + compile
# in the same call: 7B 8 x 512 (the 1.1x target) and TinyLlama 2 x 512 (1.3x), then the 7B step
# profile of HD-PiSSA K1 if time is left.
# Run as: bash scripts/device-calls/c16.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o16; mkdir -p $O
run_suites $O hdpissa_llama_cuda_tests:60 hdpissa_cuda_train_tests:120 hdpissa_llama_decode_cuda_tests:60
OUT=$O/t8 WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=llama2-7b MICRO_BATCHES=8 \
  OURS_CONFIGS="hdpissa-K1 lora" PEFT_METHODS=lora-bf16-compile \
  DEADLINE_S=$(( END - 130 - $(el) )) scripts/throughput.sh > $O/t8.txt 2>&1
cp $O/t8/throughput.md $OUT/7b-mb8.md 2>/dev/null; grep -E "rc |total" $O/t8/throughput.log; echo "7b mb8 done at $(el) s"
OUT=$O/t2 WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=tinyllama MICRO_BATCHES=2 \
  OURS_CONFIGS="hdpissa-K1 lora" PEFT_METHODS=lora-bf16-compile \
  DEADLINE_S=$(( END - 40 - $(el) )) scripts/throughput.sh > $O/t2.txt 2>&1
cp $O/t2/throughput.md $OUT/tiny-mb2.md 2>/dev/null; grep -E "rc |total" $O/t2/throughput.log; echo "tiny mb2 done at $(el) s"
if (( END - $(el) > 60 )); then
  OUT=$O/prof WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPE=llama2-7b MB=8 STEPS=3 CONFIGS="hdpissa-K1" \
    timeout $(( END - 10 - $(el) )) scripts/profile-step.sh > $O/prof.txt 2>&1
  cp $O/prof/profile.md $OUT/profile-7b-mb8.md 2>/dev/null; cat $O/prof/profile.md 2>/dev/null
fi
mkdir -p $O/runs; cp -r /tmp/tpw/runs/. $O/runs/ 2>/dev/null
tar czf $OUT/c16-logs.tgz -C $O . 2>/dev/null; ls -la $OUT; echo "done at $(el) s"
