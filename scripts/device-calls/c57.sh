# call 57 (written in session 24 for the next session; after c56, same .devpack): the micro-batch 2
# rows, not measured since session 23 (c50b) and never with --keep-swiglu: TinyLlama and LLaMA-2-7B
# 2 x 512 x 8, HD-PiSSA K1 / LoRA / PiSSA with and without --keep-swiglu, against PEFT LoRA +
# torch.compile of the same shape in the same call.
# Run as: bash scripts/device-calls/c57.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o57; mkdir -p $O
OUT=$O/t WORK=/tmp/tpt PREBUILT=$PWD/.devbin SHAPES=tinyllama MICRO_BATCHES=2 OURS_STEPS=8 \
  OURS_CONFIGS="hdpissa-K1 hdpissa-K1+keep lora lora+keep pissa" PEFT_METHODS=lora-bf16-compile \
  DEADLINE_S=$(( END / 2 - $(el) )) scripts/throughput.sh > $O/t.txt 2>&1
cp $O/t/throughput.md $OUT/tinyllama-mb2.md 2>/dev/null; echo "tinyllama done at $(el) s"
grep -E "^\| (\*\*)?(ours|peft)" $O/t/throughput.md | head -6
OUT=$O/b WORK=/tmp/tpb PREBUILT=$PWD/.devbin SHAPES=llama2-7b MICRO_BATCHES=2 OURS_STEPS=6 \
  OURS_CONFIGS_7B="hdpissa-K1 hdpissa-K1+keep lora" PEFT_METHODS=lora-bf16-compile \
  DEADLINE_S=$(( END - 10 - $(el) )) scripts/throughput.sh > $O/b.txt 2>&1
cp $O/b/throughput.md $OUT/llama2-7b-mb2.md 2>/dev/null; echo "7b done at $(el) s"
grep -E "^\| (\*\*)?(ours|peft)" $O/b/throughput.md | head -5
tar czf $OUT/c57-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
