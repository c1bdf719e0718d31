# call 10 (session 14's plan; not run): issue 20 at the 7B shape, micro-batch 2 (target 1.3x PEFT +
# compile; session 14 on an H100: 1.16-1.19x over 3 timed steps; session 12 on an H200: 1.27-1.30x),
# with 7 timed steps per run and the bf16 GEMM tuner A/B (+tune).
# Run as: bash scripts/device-calls/c10.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o10; mkdir -p $O
OUT=$O/t2 WORK=/tmp/tpw-7b PREBUILT=$PWD/.devbin SHAPES=llama2-7b MICRO_BATCHES=2 OURS_STEPS=8 \
  OURS_CONFIGS="lora lora+tune hdpissa-K1 hdpissa-K1+tune pissa" PEFT_METHODS=lora-bf16-compile \
  DEADLINE_S=$(( END - 10 - $(el) )) scripts/throughput.sh > $O/t2.txt 2>&1
cp $O/t2/throughput.md $OUT/7b-mb2.md 2>/dev/null; grep -E "rc |total" $O/t2/throughput.log; echo "7b mb2 done at $(el) s"
mkdir -p $O/runs; cp -r /tmp/tpw-7b/runs/. $O/runs/ 2>/dev/null
tar czf $OUT/c10-logs.tgz -C $O . 2>/dev/null; ls -la $OUT
