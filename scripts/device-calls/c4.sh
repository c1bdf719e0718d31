# call 4 (session 13's plan; not run: no device was lent in session 13): the GPU suites that changed
# since session 12 (the two mended failures, the ledger / embedding / staging tests, the DWU with one
# copy of its factors and no receive buffer), then issue 13's micro-batch-2 memory against PEFT +
# compile at TinyLlama and 7B with the ledger's breakdown (throughput.md's "at the peak" table).
# Run as: bash scripts/device-calls/c4.sh   (carry [".devpack", ".devdata"]; binaries at >= this commit)
source scripts/device-calls/common.sh
O=/tmp/o4; mkdir -p $O
export HDPISSA_DATA=$PWD/.devdata HDPISSA_GPU_TEST_SCRATCH=/tmp/gts
for t in hdpissa_llama_cuda_tests hdpissa_cuda_train_tests hdpissa_cuda_tests; do
  timeout $(( ${SUITE_S:-150} )) .devbin/$t --no-intro > $O/$t.txt 2>&1; echo "$t rc $? at $(el) s"
  grep -E "test cases:|assertions:|ERROR|peak parts" $O/$t.txt | head -20
done
OUT=$O/tt WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=tinyllama MICRO_BATCHES=2 \
  OURS_CONFIGS="lora pissa hdpissa-K1" PEFT_METHODS=lora-bf16-compile DEADLINE_S=$(( (END - $(el)) / 3 )) scripts/throughput.sh > $O/tt.txt 2>&1
cp $O/tt/throughput.md $OUT/tiny-mb2.md 2>/dev/null; grep -E "rc |total" $O/tt/throughput.log; echo "tiny mb2 done at $(el) s"
OUT=$O/t2 WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=llama2-7b MICRO_BATCHES=2 \
  OURS_CONFIGS="lora hdpissa-K1 pissa" PEFT_METHODS=lora-bf16-compile DEADLINE_S=$(( END - 10 - $(el) )) scripts/throughput.sh > $O/t2.txt 2>&1
cp $O/t2/throughput.md $OUT/7b-mb2.md 2>/dev/null; grep -E "rc |total" $O/t2/throughput.log; echo "7b mb2 done at $(el) s"
grep -h "device memory at the peak" -r /tmp/tpw/runs $O 2>/dev/null | head -20
tar czf $OUT/c4-logs.tgz -C $O . 2>/dev/null; ls -la $OUT
