# call 19 (session 17): issue 20's rows without a same-call PEFT peer since session 14 — LLaMA-2-7B
# 2 x 512 (~150-180 s of PEFT compile on an H100), then TinyLlama 2 x 512 if time is left — and the
# TinyLlama 8 x 512 section profile first; `+tune` = bit-exact cuBLASLt tuning of the bf16 GEMMs, an A/B never run in training (scripts/profile-step.sh: bare model, HD-PiSSA K1, LoRA).
# Run as: bash scripts/device-calls/c19.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o19; mkdir -p $O
OUT=$O/proft WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPE=tinyllama MB=8 GA=2 STEPS=3 CONFIGS="hdpissa-K1 lora" \
  timeout 90 scripts/profile-step.sh > $O/proft.txt 2>&1
cp $O/proft/profile.md $OUT/profile-tiny-mb8.md 2>/dev/null; cat $O/proft/profile.md 2>/dev/null; echo "tiny profile done at $(el) s"
OUT=$O/t2 WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=llama2-7b MICRO_BATCHES=2 \
  OURS_CONFIGS="hdpissa-K1 hdpissa-K1+tune lora" PEFT_METHODS=lora-bf16-compile \
  DEADLINE_S=$(( END - 15 - $(el) )) scripts/throughput.sh > $O/t2.txt 2>&1
cp $O/t2/throughput.md $OUT/7b-mb2.md 2>/dev/null; grep -E "rc |total" $O/t2/throughput.log; echo "7b mb2 done at $(el) s"
grep -E "^\| (\*\*)?(ours|peft)" $O/t2/throughput.md | head
if (( END - $(el) > 150 )); then
  OUT=$O/tt WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=tinyllama MICRO_BATCHES=2 \
    OURS_CONFIGS="hdpissa-K1 hdpissa-K1+tune lora" PEFT_METHODS=lora-bf16-compile \
    DEADLINE_S=$(( END - 10 - $(el) )) scripts/throughput.sh > $O/tt.txt 2>&1
  cp $O/tt/throughput.md $OUT/tiny-mb2.md 2>/dev/null; grep -E "rc |total" $O/tt/throughput.log; echo "tiny mb2 done at $(el) s"
fi
mkdir -p $O/runs; cp -r /tmp/tpw/runs/. $O/runs/ 2>/dev/null
tar czf $OUT/c19-logs.tgz -C $O . 2>/dev/null; ls -la $OUT; echo "done at $(el) s"
