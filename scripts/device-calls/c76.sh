# call 76 (written in session 27 for branch next/tiny-attn, i.e. docs/pending/next-tiny-attn.patch on
# main: the forward's register target 3 at head dim 64 and the default band = 32 K / V heads' query
# heads; build hdpissa-train, hdpissa_llama_cuda_tests, bench_flash_attn and pack them, with main's
# hdpissa-train copied to .devbin/base/ first): 1) the model suite (the register-target and
# block-order bits cases); 2) bench_flash_attn at B 2 and 8 (the "(the defaults)" rows against
# c74's); 3) TinyLlama 2 x 512 x 8 HD-PiSSA K1 and LoRA against main's binary, PEFT + compile.
# Run as: bash scripts/device-calls/c76.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o76; mkdir -p $O
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
run_suites $O hdpissa_llama_cuda_tests:60
for b in 2 8; do timeout 90 .devbin/bench_flash_attn --batch $b --shape all --reps 20 > $O/flash-b$b.txt 2>&1; done
cat $O/flash-b*.txt > $OUT/flash.txt; grep -E "register|defaults|attention|differ" $OUT/flash.txt | head -40
OUT=$O/t WORK=/tmp/tpt PREBUILT=$PWD/.devbin SHAPES=tinyllama MICRO_BATCHES=2 OURS_STEPS=8 \
  OURS_CONFIGS="hdpissa-K1 lora" BASELINE_BIN=$PWD/.devbin/base/hdpissa-train BASELINE_LABEL="main" \
  BASELINE_CONFIGS="hdpissa-K1 lora" PEFT_METHODS=lora-bf16-compile \
  DEADLINE_S=$(( END - 10 - $(el) )) scripts/throughput.sh > $O/t.txt 2>&1
cp $O/t/throughput.md $OUT/tinyllama-mb2.md 2>/dev/null; echo "tinyllama done at $(el) s"
grep -E "^\| (\*\*)?(ours|peft)" $O/t/throughput.md | head -6
tar czf $OUT/c76-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
