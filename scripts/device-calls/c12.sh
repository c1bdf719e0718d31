# call 12 (session 15): the decoder suite (the fused attention's 256-key default), issue 16's
# decode bench at both shapes with the new defaults (256 keys per split where the fused attention
# runs, bit-exact bf16 GEMM tuning in hdpissa-generate / hdpissa-eval) against transformers
# generate, then issue 20's TinyLlama 8 x 512 row (LoRA, HD-PiSSA K1 vs PEFT + compile).
# Run as: bash scripts/device-calls/c12.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o12; mkdir -p $O
OUT=$O HDPISSA_GPU_TEST_SCRATCH=/tmp/hs SUITES=hdpissa_llama_decode_cuda_tests timeout 45 scripts/prebuilt-suites.sh >> $O/suites.txt 2>&1
echo "decode suite rc $? at $(el) s" >> $O/suites.txt; cat $O/suites.txt; cp $O/suites.txt $OUT/
OUT=$O/d WORK=/tmp/dbw PREBUILT=$PWD/.devbin SHAPES="llama2-7b tinyllama" GSM8K_SHAPES=none HF_TIMEOUT=200 \
  timeout $(( END - 230 - $(el) )) scripts/decode-bench.sh > $O/d.txt 2>&1
cp $O/d/decode-bench.md $OUT/ 2>/dev/null; cat $O/d/decode-bench.md; echo "decode-bench done at $(el) s"
OUT=$O/tt WORK=/tmp/tpw-tiny PREBUILT=$PWD/.devbin SHAPES=tinyllama MICRO_BATCHES=8 \
  OURS_CONFIGS="lora hdpissa-K1" PEFT_METHODS=lora-bf16-compile DEADLINE_S=$(( END - 10 - $(el) )) scripts/throughput.sh > $O/tt.txt 2>&1
cp $O/tt/throughput.md $OUT/tiny-mb8.md 2>/dev/null; grep -E "rc |total" $O/tt/throughput.log; echo "tiny mb8 done at $(el) s"
cat $O/tt/throughput.md 2>/dev/null | head -20
mkdir -p $O/runs; cp -r /tmp/tpw-tiny/runs/. $O/runs/ 2>/dev/null
tar czf $OUT/c12-logs.tgz -C $O . 2>/dev/null; ls -la $OUT
