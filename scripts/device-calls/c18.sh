# call 18 (session 17; its first form stopped after the llama suite: the poisoned row-layout test
# found −0 in the flash forward's padding rows, fixed in 446eea4): the unrun
# changes of def0325 / 9f38444 and this session's fix through the llama CUDA suite first — nothing
# else runs if it fails — then the decoder and trainer suites, issue 20's TinyLlama 8 x 512 row
# against PEFT + compile (~100 s of compile on an H100), then the 7B 8 x 512 section profile
# (scripts/profile-step.sh: bare model, HD-PiSSA K1, LoRA; last measured in session 12).
# Run as: bash scripts/device-calls/c18.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o18; mkdir -p $O
run_suites $O hdpissa_llama_cuda_tests:60
if ! grep -q "hdpissa_llama_cuda_tests rc 0" $O/suites.txt; then
  tar czf $OUT/c18-logs.tgz -C $O . 2>/dev/null; echo "llama CUDA suite failed: stopping"; exit 1
fi
run_suites $O hdpissa_llama_decode_cuda_tests:40 hdpissa_cuda_train_tests:120
OUT=$O/t8 WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=tinyllama MICRO_BATCHES=8 \
  OURS_CONFIGS="hdpissa-K1 lora" PEFT_METHODS=lora-bf16-compile \
  DEADLINE_S=$(( END - 110 - $(el) )) scripts/throughput.sh > $O/t8.txt 2>&1
cp $O/t8/throughput.md $OUT/tiny-mb8.md 2>/dev/null; grep -E "rc |total" $O/t8/throughput.log; echo "tiny mb8 done at $(el) s"
grep -E "^\| (\*\*)?(ours|peft)" $O/t8/throughput.md | head
if (( END - $(el) > 60 )); then
  OUT=$O/prof WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPE=llama2-7b MB=8 GA=2 STEPS=3 CONFIGS="hdpissa-K1 lora" \
    timeout $(( END - 8 - $(el) )) scripts/profile-step.sh > $O/prof.txt 2>&1
  cp $O/prof/profile.md $OUT/profile-7b-mb8.md 2>/dev/null; cat $O/prof/profile.md 2>/dev/null; echo "profile done at $(el) s"
fi
mkdir -p $O/runs; cp -r /tmp/tpw/runs/. $O/runs/ 2>/dev/null
tar czf $OUT/c18-logs.tgz -C $O . 2>/dev/null; ls -la $OUT; echo "done at $(el) s"
