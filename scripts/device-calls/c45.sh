# call 45 (written in session 21 for the next session, on branch next/loss-shapes, after c44 and only
# if c44's suites passed): the rest of c44's A/B, the loss GEMMs over 128-row multiples (ours) vs the
# exact count (baseline wrapper, HDPISSA_LOSS_ROW_ALIGN=1), against PEFT + compile, at LLaMA-2-7B
# 8 x 512 and TinyLlama 2 x 512 (session 20's 7B 2 x 512 row could follow in a later call).
# Run as: bash scripts/device-calls/c45.sh   (carry [".devpack", ".devdata"])
# It reuses c44's loop: no suites, no profiles.
source scripts/device-calls/common.sh
O=/tmp/o45; mkdir -p $O
printf '#!/bin/bash\nHDPISSA_LOSS_ROW_ALIGN=1 exec "%s" "$@"\n' "$PWD/.devbin/hdpissa-train" > $O/train-align1; chmod +x $O/train-align1
for sm in llama2-7b:8 tinyllama:2; do
  shape=${sm%%:*}; mb=${sm##*:}
  (( END - $(el) > 150 )) || break
  OUT=$O/t-$shape-$mb WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=$shape MICRO_BATCHES=$mb OURS_STEPS=8 \
    OURS_CONFIGS="hdpissa-K1 lora" BASELINE_BIN=$O/train-align1 BASELINE_LABEL=align1 BASELINE_CONFIGS="hdpissa-K1 lora" \
    PEFT_METHODS=lora-bf16-compile DEADLINE_S=$(( END - 10 - $(el) )) scripts/throughput.sh > $O/t-$shape-$mb.txt 2>&1
  cp $O/t-$shape-$mb/throughput.md $OUT/$shape-mb$mb.md 2>/dev/null; echo "$shape mb$mb done at $(el) s"
  grep -E "^\| (\*\*)?(ours|peft)" $O/t-$shape-$mb/throughput.md | head -6
done
tar czf $OUT/c45-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
