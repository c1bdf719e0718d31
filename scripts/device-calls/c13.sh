# call 13 (session 15's plan; not run): the suites, then issue 20 rows not re-measured since the low-rank DWU kernel
# and issue 16 on an H200 with the new defaults. TinyLlama 8 x 512 (the row where PEFT +
# compile led our LoRA), LoRA / HD-PiSSA K1 / HD-PiSSA K1+3xtf32 vs PEFT + compile, then the 7B
# decode bench (ours with the new defaults + transformers). Prefer an H200 (the GSM8K / 2x targets
# are stated for it). Run as: bash scripts/device-calls/c13.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o13; mkdir -p $O
# b91a98e's GPU changes (the low-rank kernel's shared-memory fit check, Simt refused at finalize,
# the multi-tile kernel test) were compiled, not run: the CUDA library and trainer suites first.
run_suites $O hdpissa_cuda_tests:90 hdpissa_cuda_train_tests:120
OUT=$O/tt WORK=/tmp/tpw-tiny PREBUILT=$PWD/.devbin SHAPES=tinyllama MICRO_BATCHES=8 \
  OURS_CONFIGS="lora hdpissa-K1 hdpissa-K1+3xtf32" PEFT_METHODS=lora-bf16-compile DEADLINE_S=$(( END - 150 - $(el) )) scripts/throughput.sh > $O/tt.txt 2>&1
cp $O/tt/throughput.md $OUT/tiny-mb8.md 2>/dev/null; grep -E "rc |total" $O/tt/throughput.log; echo "tiny mb8 done at $(el) s"
OUT=$O/d WORK=/tmp/dbw PREBUILT=$PWD/.devbin SHAPES=llama2-7b GSM8K_SHAPES=none HF_TIMEOUT=150 \
  timeout $(( END - 10 - $(el) )) scripts/decode-bench.sh > $O/d.txt 2>&1
cp $O/d/decode-bench.md $OUT/ 2>/dev/null; cat $O/d/decode-bench.md; echo "decode done at $(el) s"
mkdir -p $O/runs; cp -r /tmp/tpw-tiny/runs/. $O/runs/ 2>/dev/null
tar czf $OUT/c13-logs.tgz -C $O . 2>/dev/null; ls -la $OUT
