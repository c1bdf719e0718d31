# call 9 (session 14's plan; not run): issue 20's training A/B of the bf16 GEMM tuner (+tune =
# HDPISSA_CUDA_GEMM_TUNING_BF16=exact; bit-identical results, so only speed may change) against
# PEFT + compile in the same call: TinyLlama 8 x 512, then the 7B shape 8 x 512.
# Run as: bash scripts/device-calls/c9.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o9; mkdir -p $O
OUT=$O/tt WORK=/tmp/tpw-tiny PREBUILT=$PWD/.devbin SHAPES=tinyllama MICRO_BATCHES=8 \
  OURS_CONFIGS="lora lora+tune hdpissa-K1 hdpissa-K1+tune" PEFT_METHODS=lora-bf16-compile DEADLINE_S=200 scripts/throughput.sh > $O/tt.txt 2>&1
cp $O/tt/throughput.md $OUT/tiny-mb8.md 2>/dev/null; grep -E "rc |total" $O/tt/throughput.log; echo "tiny mb8 done at $(el) s"
OUT=$O/t8 WORK=/tmp/tpw-7b PREBUILT=$PWD/.devbin SHAPES=llama2-7b MICRO_BATCHES=8 \
  OURS_CONFIGS="lora lora+tune hdpissa-K1 hdpissa-K1+tune" PEFT_METHODS=lora-bf16-compile \
  DEADLINE_S=$(( END - 10 - $(el) )) scripts/throughput.sh > $O/t8.txt 2>&1
cp $O/t8/throughput.md $OUT/7b-mb8.md 2>/dev/null; grep -E "rc |total" $O/t8/throughput.log; echo "7b mb8 done at $(el) s"
mkdir -p $O/runs-tiny $O/runs-7b; cp -r /tmp/tpw-tiny/runs/. $O/runs-tiny/ 2>/dev/null; cp -r /tmp/tpw-7b/runs/. $O/runs-7b/ 2>/dev/null
tar czf $OUT/c9-logs.tgz -C $O . 2>/dev/null; ls -la $OUT
