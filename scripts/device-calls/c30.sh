# call 30 (session 19): issue 20's LLaMA-2-7B rows (8 x 512 and 2 x 512) with this session's code
# (fp32 adapter-gradient GEMMs, the DWU SR epilogue on 32-bit words) against the 942e19b binary
# (session 18's code) and PEFT LoRA + torch.compile, in one call.
# Run as: bash scripts/device-calls/c30.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o30; mkdir -p $O
for mb in 8 2; do
  (( END - $(el) > 120 )) || break
  OUT=$O/s$mb WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=llama2-7b MICRO_BATCHES=$mb \
    OURS_CONFIGS="hdpissa-K1 lora" BASELINE_BIN=$PWD/.devbin/hdpissa-train-942e19b BASELINE_LABEL=942e19b \
    BASELINE_CONFIGS="hdpissa-K1 lora" PEFT_METHODS=lora-bf16-compile \
    DEADLINE_S=$(( END - 5 - $(el) )) scripts/throughput.sh > $O/s$mb.txt 2>&1
  cp $O/s$mb/throughput.md $OUT/7b-mb$mb.md 2>/dev/null; grep -E "rc |total" $O/s$mb/throughput.log; echo "7b mb$mb done at $(el) s"
  grep -E "^\| (\*\*)?(ours|peft)" $O/s$mb/throughput.md | head -5
done
tar czf $OUT/c30-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
