# call 7 (session 14): the CUDA library suite again (the ledger test's tuner-flag fix), then issue 13's
# micro-batch-8 memory at the 7B shape after session 13's cuts (LoRA and HD-PiSSA one group vs PEFT +
# compile). Run as: END_S=380 bash scripts/device-calls/c7.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o7; mkdir -p $O
OUT=$O HDPISSA_GPU_TEST_SCRATCH=/tmp/hs SUITES=hdpissa_cuda_tests timeout 90 scripts/prebuilt-suites.sh > $O/suites.txt 2>&1
echo "suite rc $? at $(el) s" >> $O/suites.txt; cat $O/suites.txt; cp $O/suites.txt $OUT/
OUT=$O/t8 WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=llama2-7b MICRO_BATCHES=8 \
  OURS_CONFIGS="lora hdpissa-K1" PEFT_METHODS=lora-bf16-compile DEADLINE_S=$(( END - 10 - $(el) )) scripts/throughput.sh > $O/t8.txt 2>&1
cp $O/t8/throughput.md $OUT/7b-mb8.md 2>/dev/null; grep -E "rc |total" $O/t8/throughput.log; echo "7b mb8 done at $(el) s"
grep -rh "device memory at the peak" /tmp/tpw/runs 2>/dev/null | head -4
mkdir -p $O/runs; cp -r /tmp/tpw/runs/. $O/runs/ 2>/dev/null
tar czf $OUT/c7-logs.tgz -C $O --exclude suites . 2>/dev/null; ls -la $OUT
