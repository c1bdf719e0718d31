# call 11 (session 15): the CUDA-core low-rank DWU kernel (dwu_lowrank.cuh; auto at 2Kr <= 64 on a
# bf16 W storage) and DataParallelUpdate's one non-finite check per step. The CUDA library suite
# (the kernel against a host replay, bit for bit; the bf16-storage DWU with auto / simt / 3xtf32 ==
# CPU) and the trainer suite first, then issue 20's 7B 8 x 512 row: LoRA, HD-PiSSA K1 (new kernel)
# and HD-PiSSA K1+3xtf32 (the sm_90a kernel, as before) against PEFT + compile in the same call.
# Run as: bash scripts/device-calls/c11.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o11; mkdir -p $O
run_suites $O hdpissa_cuda_tests:90 hdpissa_cuda_train_tests:120
OUT=$O/t8 WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=llama2-7b MICRO_BATCHES=8 \
  OURS_CONFIGS="hdpissa-K1 hdpissa-K1+3xtf32 lora" PEFT_METHODS=lora-bf16-compile \
  DEADLINE_S=$(( END - 10 - $(el) )) scripts/throughput.sh > $O/t8.txt 2>&1
cp $O/t8/throughput.md $OUT/7b-mb8.md 2>/dev/null; grep -E "rc |total" $O/t8/throughput.log; echo "7b mb8 done at $(el) s"
cat $O/t8/throughput.md 2>/dev/null | head -30
mkdir -p $O/runs; cp -r /tmp/tpw/runs/. $O/runs/ 2>/dev/null
tar czf $OUT/c11-logs.tgz -C $O . 2>/dev/null; ls -la $OUT
