# call 58 (session 25; .devpack: next/stacked — hdpissa-train and the three GPU suites at its head):
# the stacked q|k|v, gate|up GEMMs (HDPISSA_STACKED_LINEARS, default on) and the DWU adapter
# gradients on a second stream (HDPISSA_ADAPTER_STREAM, default on) — the suites (the strided SwiGLU
# kernel case; the trainer's stacked vs per-member losses for hdpissa, hdpissa --targets q,v, lora,
# pissa; the second stream bit for bit; every earlier case on the new layout), then TinyLlama
# 2 x 512 x 8: HD-PiSSA K1 (both on; one stream; neither) and LoRA (stacked or not) against PEFT
# LoRA + torch.compile in the same call.
# Run as: bash scripts/device-calls/c58.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o58; mkdir -p $O
run_suites $O hdpissa_cuda_tests:100 hdpissa_llama_cuda_tests:60 hdpissa_cuda_train_tests:240
grep -h -E "ERROR|FAILED|stacked calls|loss per member" $O/suites/*.log 2>/dev/null | head -40
OUT=$O/t WORK=/tmp/tpt PREBUILT=$PWD/.devbin SHAPES=tinyllama MICRO_BATCHES=2 OURS_STEPS=8 \
  OURS_CONFIGS="hdpissa-K1 hdpissa-K1+onestream hdpissa-K1+unstacked+onestream lora lora+unstacked" PEFT_METHODS=lora-bf16-compile \
  DEADLINE_S=$(( END - 10 - $(el) )) scripts/throughput.sh > $O/t.txt 2>&1
cp $O/t/throughput.md $OUT/tinyllama-mb2.md 2>/dev/null; echo "tinyllama done at $(el) s"
grep -E "^\| (\*\*)?(ours|peft)" $O/t/throughput.md | head -6
tar czf $OUT/c58-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
