# call 2: 7B throughput + memory vs PEFT+compile: 8x512 (bf16 + fp8), then 2x512 (memory); then profile / fp8 deviation if time is left
source scripts/device-calls/common.sh
O=/tmp/o2; mkdir -p $O
OUT=$O/t8 WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=llama2-7b MICRO_BATCHES=8 \
  OURS_CONFIGS="${OURS8:-lora hdpissa-K1 lora+fp8 hdpissa-K1+fp8}" PEFT_METHODS=lora-bf16-compile DEADLINE_S=${D8:-290} scripts/throughput.sh > $O/t8.txt 2>&1
mkdir -p $O/runs8; cp -r /tmp/tpw/runs/. $O/runs8/ 2>/dev/null
cp $O/t8/throughput.md $OUT/t8.md 2>/dev/null; cat $O/t8/throughput.log | grep -E "rc |total"
echo "mb8 done at $(el) s"
if (( $(el) < ${MB2_IF_BEFORE:-330} )); then
  OUT=$O/t2 WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=llama2-7b MICRO_BATCHES=2 \
    OURS_CONFIGS="${OURS2:-lora hdpissa-K1 pissa}" PEFT_METHODS=lora-bf16-compile DEADLINE_S=$(( END - 10 - $(el) )) scripts/throughput.sh > $O/t2.txt 2>&1
  cp $O/t2/throughput.md $OUT/t2.md 2>/dev/null; grep -E "rc |total" $O/t2/throughput.log
  echo "mb2 done at $(el) s"
fi
startup_lines $O/runs8 /tmp/tpw/runs > $OUT/startup.txt; cat $OUT/startup.txt
if (( $(el) < ${PROF_IF_BEFORE:-440} )); then
  OUT=$O/prof WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPE=llama2-7b MB=8 timeout $(( END - $(el) )) scripts/profile-step.sh > $O/prof.txt 2>&1
  cp $O/prof/profile.md $OUT/ 2>/dev/null; cat $O/prof/profile.md; echo "profile done at $(el) s"
fi
tar czf $OUT/c2-logs.tgz -C $O . 2>/dev/null; ls -la $OUT
