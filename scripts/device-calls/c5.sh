# call 5 (session 13's plan; not run): issue 13's micro-batch-2 memory against PEFT + compile, with the
# memory ledger's breakdown ("Ours at the peak" in throughput.md): TinyLlama, then the 7B shape (made
# here; ~1 min). One process at a time on the GPU (device-wide peaks). Run as:
# bash scripts/device-calls/c5.sh   (carry [".devpack", ".devdata"]; binaries packed at >= e74c88a)
source scripts/device-calls/common.sh
O=/tmp/o5; mkdir -p $O
OUT=$O/tt WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=tinyllama MICRO_BATCHES=2 \
  OURS_CONFIGS="lora pissa hdpissa-K1" PEFT_METHODS=lora-bf16-compile DEADLINE_S=${DT:-200} scripts/throughput.sh > $O/tt.txt 2>&1
cp $O/tt/throughput.md $OUT/tiny-mb2.md 2>/dev/null; grep -E "rc |total" $O/tt/throughput.log; echo "tiny mb2 done at $(el) s"
OUT=$O/t2 WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=llama2-7b MICRO_BATCHES=2 \
  OURS_CONFIGS="lora hdpissa-K1 pissa" PEFT_METHODS=lora-bf16-compile DEADLINE_S=$(( END - 10 - $(el) )) scripts/throughput.sh > $O/t2.txt 2>&1
cp $O/t2/throughput.md $OUT/7b-mb2.md 2>/dev/null; grep -E "rc |total" $O/t2/throughput.log; echo "7b mb2 done at $(el) s"
grep -rh "device memory at the peak" /tmp/tpw/runs 2>/dev/null | head -12
mkdir -p $O/runs; cp -r /tmp/tpw/runs/. $O/runs/ 2>/dev/null
tar czf $OUT/c5-logs.tgz -C $O . 2>/dev/null; ls -la $OUT
