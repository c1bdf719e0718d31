# call 75 (written in session 27, not run: no machine; main's binaries at the default band 32):
# 1) bench_flash_attn at 7B B 8 with the poison on the kernels' stream (c74's "DIFFERENT" rows were
#    the bench's legacy-stream memset racing the launch; the suite's bits test passed); 2) issue 20's
#    profile table (profile-step.sh: the bare model vs HD-PiSSA K1 at 7B 2 x 512 x 8, and LoRA too
#    at TinyLlama 2 x 512 x 8); 3) as time allows, 7B 8 x 512 x 2 HD-PiSSA K1 with the default band
#    and +band1 (HDPISSA_FLASH_BAND=1: the order before session 27), PEFT + compile in the same call.
# Run as: bash scripts/device-calls/c75.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o75; mkdir -p $O
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
timeout 60 .devbin/bench_flash_attn --batch 8 --shape 7b --reps 20 > $OUT/flash-7b-b8.txt 2>&1
grep -E "band|default|differ" $OUT/flash-7b-b8.txt | head -30; echo "bench done at $(el) s"
run_profile $O /tmp/tpt tiny2 SHAPE=tinyllama MB=2 GA=8 STEPS=3 CONFIGS="hdpissa-K1 lora"
run_profile $O /tmp/tpt 7b2 SHAPE=llama2-7b MB=2 GA=8 STEPS=3 CONFIGS="hdpissa-K1"
OUT=$O/t WORK=/tmp/tpt PREBUILT=$PWD/.devbin SHAPES=llama2-7b MICRO_BATCHES=8 OURS_STEPS=4 \
  OURS_CONFIGS="hdpissa-K1 hdpissa-K1+band1" PEFT_METHODS=lora-bf16-compile \
  DEADLINE_S=$(( END - 5 - $(el) )) scripts/throughput.sh > $O/t.txt 2>&1
cp $O/t/throughput.md $OUT/llama2-7b-mb8.md 2>/dev/null; echo "7b mb8 done at $(el) s"
grep -E "^\| (\*\*)?(ours|peft)" $O/t/throughput.md | head -6
tar czf $OUT/c75-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
