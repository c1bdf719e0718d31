# call 25 (session 18): issue 20's LLaMA-2-7B rows with the binaries of c24 (9a00667): 8 x 512 and
# 2 x 512, HD-PiSSA K1 and LoRA, each with the default loss chunk (512 rows at 32k vocab) and with
# +chunk1024 (HDPISSA_LOSS_CHUNK_ROWS=1024; c24 measured +1.5 % at TinyLlama 8 x 512), against PEFT
# LoRA + torch.compile in the same call. 7B 8 x 512 was last measured in session 16.
# Run as: bash scripts/device-calls/c25.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o25; mkdir -p $O
for mb in 8 2; do
  (( END - $(el) > 120 )) || break
  OUT=$O/s$mb WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=llama2-7b MICRO_BATCHES=$mb \
    OURS_CONFIGS="hdpissa-K1 hdpissa-K1+chunk1024 lora lora+chunk1024" PEFT_METHODS=lora-bf16-compile \
    DEADLINE_S=$(( END - 5 - $(el) )) scripts/throughput.sh > $O/s$mb.txt 2>&1
  cp $O/s$mb/throughput.md $OUT/7b-mb$mb.md 2>/dev/null; grep -E "rc |total" $O/s$mb/throughput.log; echo "7b mb$mb done at $(el) s"
  grep -E "^\| (\*\*)?(ours|peft)" $O/s$mb/throughput.md | head -5
done
tar czf $OUT/c25-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
