# call 60 (session 25: c53 again, for an H200 when one comes; same .devpack — hdpissa-generate and hdpissa-eval at 63a2556, the decoder unchanged since): issue 16's
# decode rows, not measured since session 21: hdpissa-generate --device cuda against transformers'
# generate (bf16, static cache, greedy, batch 64, 256 new tokens) at TinyLlama and 7B, and the
# GSM8K test time at 7B (extrapolated from the progress line if cut at 300 s). On an H100 the 7B
# GSM8K target (≤ 5 min on an H200) is indicative only.
# Run as: bash scripts/device-calls/c53.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o60; mkdir -p $O
OUT=$O/d PREBUILT=$PWD/.devbin WORK=/tmp/hdb SHAPES="tinyllama llama2-7b" BATCH=64 NEW_TOKENS=256 \
  GSM8K_SHAPES=llama2-7b GSM8K_TIMEOUT=150 OURS_TIMEOUT=120 HF_TIMEOUT=150 \
  timeout $(( END - 10 )) scripts/decode-bench.sh > $O/d.txt 2>&1
echo "decode-bench rc $? at $(el) s"; cat $O/d/decode-bench.md 2>/dev/null
cp $O/d/decode-bench.md $OUT/ 2>/dev/null; tar czf $OUT/c60-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
