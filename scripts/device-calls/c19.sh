# call 19 (session 17): the decoder suite (the decoder's RoPE now rounds as the training model's),
# then where a 7B step's time goes today — `scripts/profile-step.sh` at 8 x 512 x 2 (bare model,
# HD-PiSSA K1, LoRA; the trainer's section profile was last measured in session 12) — then issue
# 20's 7B 2 x 512 row (TinyLlama 8 x 512 profiled too) against PEFT + compile in the same call (~150-180 s of compile on an H100).
# Run as: bash scripts/device-calls/c19.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o19; mkdir -p $O
run_suites $O hdpissa_llama_decode_cuda_tests:40
OUT=$O/prof WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPE=llama2-7b MB=8 GA=2 STEPS=3 CONFIGS="hdpissa-K1 lora" \
  timeout 150 scripts/profile-step.sh > $O/prof.txt 2>&1
cp $O/prof/profile.md $OUT/profile-7b-mb8.md 2>/dev/null; cat $O/prof/profile.md 2>/dev/null; echo "profile done at $(el) s"
OUT=$O/proft WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPE=tinyllama MB=8 GA=2 STEPS=3 CONFIGS="hdpissa-K1 lora" \
  timeout 90 scripts/profile-step.sh > $O/proft.txt 2>&1
cp $O/proft/profile.md $OUT/profile-tiny-mb8.md 2>/dev/null; cat $O/proft/profile.md 2>/dev/null; echo "tiny profile done at $(el) s"
OUT=$O/t2 WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=llama2-7b MICRO_BATCHES=2 \
  OURS_CONFIGS="hdpissa-K1 lora" PEFT_METHODS=lora-bf16-compile \
  DEADLINE_S=$(( END - 15 - $(el) )) scripts/throughput.sh > $O/t2.txt 2>&1
cp $O/t2/throughput.md $OUT/7b-mb2.md 2>/dev/null; grep -E "rc |total" $O/t2/throughput.log; echo "7b mb2 done at $(el) s"
grep -E "^\| (\*\*)?(ours|peft)" $O/t2/throughput.md | head
mkdir -p $O/runs; cp -r /tmp/tpw/runs/. $O/runs/ 2>/dev/null
tar czf $OUT/c19-logs.tgz -C $O . 2>/dev/null; ls -la $OUT; echo "done at $(el) s"
