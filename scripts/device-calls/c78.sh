# call 78 (session 28; branch next/s28 = main + docs/pending/next-tiny-attn.patch +
# next-adapter-split.patch, i.e. c76 and c77 in one call; binaries in .devpack, main's hdpissa-train
# as .devbin/base/hdpissa-train): 1) the model suite (the register-target and block-order bits cases)
# and the trainer suite (the second-stream case: LoRA and PiSSA bit for bit against one stream);
# 2) TinyLlama 2 x 512 x 8 HD-PiSSA K1 and LoRA against main's binary, PEFT + compile; 3) as time
# allows, bench_flash_attn at B 2 and 8 (the "(the defaults)" rows against c74's).
# Run as: bash scripts/device-calls/c78.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o78; mkdir -p $O
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
run_suites $O hdpissa_llama_cuda_tests:60 hdpissa_cuda_train_tests:200
grep -h -E "ERROR|FAILED" $O/suites/*.log 2>/dev/null | head -12
OUT=$O/t WORK=/tmp/tpt PREBUILT=$PWD/.devbin SHAPES=tinyllama MICRO_BATCHES=2 OURS_STEPS=8 \
  OURS_CONFIGS="hdpissa-K1 lora" BASELINE_BIN=$PWD/.devbin/base/hdpissa-train BASELINE_LABEL="main 4f1b559" \
  BASELINE_CONFIGS="hdpissa-K1 lora" PEFT_METHODS=lora-bf16-compile \
  DEADLINE_S=$(( END - 100 - $(el) )) scripts/throughput.sh > $O/t.txt 2>&1
cp $O/t/throughput.md $OUT/tinyllama-mb2.md 2>/dev/null; echo "tinyllama done at $(el) s"
grep -E "^\| (\*\*)?(ours|main|peft)" $O/t/throughput.md | head -8
for b in 2 8; do
  t=$(( END - 8 - $(el) )); (( t > 20 )) || break
  timeout $(( t < 45 ? t : 45 )) .devbin/bench_flash_attn --batch $b --shape all --reps 20 > $O/flash-b$b.txt 2>&1
done
cat $O/flash-b*.txt > $OUT/flash.txt 2>/dev/null; grep -E "register|defaults|differ" $OUT/flash.txt | head -30
tar czf $OUT/c78-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
