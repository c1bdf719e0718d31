# call 0 (one call, if only one comes): decode + model suites, the 7B decode bench, the 34B fit, then 7B fp8 throughput if time is left
source scripts/device-calls/common.sh
O=/tmp/o0; mkdir -p $O
OUT=$O/s HDPISSA_GPU_TEST_SCRATCH=/tmp/hs2 SUITES="hdpissa_llama_decode_cuda_tests hdpissa_llama_cuda_tests" timeout 150 scripts/prebuilt-suites.sh > $O/s.txt 2>&1
cat $O/s.txt; cp $O/s.txt $OUT/; echo "suites done at $(el) s"
OUT=$O/d WORK=/tmp/dbw PREBUILT=$PWD/.devbin SHAPES=llama2-7b GSM8K_SHAPES="${GSM8K_SHAPES-}" GSM8K_TIMEOUT=120 timeout 200 scripts/decode-bench.sh > $O/d.txt 2>&1
cp $O/d/decode-bench.md $OUT/ 2>/dev/null; cat $O/d/decode-bench.md; echo "decode done at $(el) s"
OUT=$O/fit34 PREBUILT=$PWD/.devbin timeout $(( END - 30 - $(el) )) scripts/fit-34b.sh
echo "fit rc $? done at $(el) s"; cp $O/fit34/fit34.md $OUT/ 2>/dev/null
if (( $(el) < 330 )); then
  OUT=$O/t8 WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=llama2-7b MICRO_BATCHES=8 OURS_CONFIGS="hdpissa-K1 hdpissa-K1+fp8 lora+fp8" \
    PEFT_METHODS=lora-bf16-compile DEADLINE_S=$(( END - 10 - $(el) )) scripts/throughput.sh > $O/t8.txt 2>&1
  cp $O/t8/throughput.md $OUT/t8.md 2>/dev/null; grep -E "rc |total" $O/t8/throughput.log; echo "t8 done at $(el) s"
fi
startup_lines /tmp/tpw/runs > $OUT/startup.txt; cat $OUT/startup.txt
tar czf $OUT/c0-logs.tgz -C $O . 2>/dev/null; ls -la $OUT
