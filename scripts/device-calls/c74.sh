# call 74 (session 27; branch next/s27, binaries in .devpack, main's hdpissa-train in .devbin/base):
# the flash kernels' block order in bands of heads (flash::TileOrder; c73 measured one band = every
# heavy tile first: 1.2-1.35x the kernels at micro-batch 2, 4-10 % slower at 7B 8 x 512). 1) the
# model suite (every band the same bits); 2) bench_flash_attn at B 2 and 8, bands 1 ... all; 3)
# LLaMA-2-7B 2 x 512 x 8: HD-PiSSA K1 with the default band and one band, against main's binary,
# PEFT + compile in the same call.
# Run as: bash scripts/device-calls/c74.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o74; mkdir -p $O
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
run_suites $O hdpissa_llama_cuda_tests:60
for b in 2 8; do timeout 90 .devbin/bench_flash_attn --batch $b --shape all --reps 20 > $O/flash-b$b.txt 2>&1; done
cat $O/flash-b*.txt > $OUT/flash-bands.txt; grep -E "band|default|attention|differ" $OUT/flash-bands.txt | head -80
echo "bench done at $(el) s"
OUT=$O/t WORK=/tmp/tpt PREBUILT=$PWD/.devbin SHAPES=llama2-7b MICRO_BATCHES=2 OURS_STEPS=5 \
  OURS_CONFIGS="hdpissa-K1 hdpissa-K1+bandall" BASELINE_BIN=$PWD/.devbin/base/hdpissa-train BASELINE_LABEL="main 838f4ea" \
  BASELINE_CONFIGS="hdpissa-K1" PEFT_METHODS=lora-bf16-compile \
  DEADLINE_S=$(( END - 10 - $(el) )) scripts/throughput.sh > $O/t.txt 2>&1
cp $O/t/throughput.md $OUT/llama2-7b-mb2.md 2>/dev/null; echo "7b done at $(el) s"
grep -E "^\| (\*\*)?(ours|peft)" $O/t/throughput.md | head -8
tar czf $OUT/c74-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
