# call 3: decode bench (TinyLlama + 7B, batch 64) vs transformers generate, GSM8K at 7B; then the FP8 deviation if time is left
source scripts/device-calls/common.sh
O=/tmp/o3; mkdir -p $O
OUT=$O/d WORK=/tmp/dbw PREBUILT=$PWD/.devbin SHAPES="${SHAPES:-tinyllama llama2-7b}" GSM8K_TIMEOUT=${GSM8K_TIMEOUT:-150} GSM8K_SHAPES="${GSM8K_SHAPES-llama2-7b}" timeout $(( END - $(el) )) scripts/decode-bench.sh > $O/d.txt 2>&1
cp $O/d/decode-bench.md $OUT/ 2>/dev/null; cat $O/d/decode-bench.md; echo "decode done at $(el) s"
if (( $(el) < ${FD_IF_BEFORE:-440} )); then
  python3 bench/e2e/make_model.py /tmp/tl4 --preset tinyllama --layers 4 --seed 0 > $O/tl4.log 2>&1
  mkdir -p /tmp/bin/examples/llama && ln -sf $PWD/.devbin/hdpissa-train /tmp/bin/examples/llama/
  BIN=/tmp/bin MODEL=/tmp/tl4 DATA=.devdata/throughput/train.jsonl TOKENIZER=.devdata/throughput/tokenizer.model \
    STEPS=${FD_STEPS:-200} OUT=/tmp/fd timeout $(( END - $(el) )) scripts/fp8-deviation.sh > $O/fd.txt 2>&1
  cp /tmp/fd/fp8-deviation.md $OUT/ 2>/dev/null; cp /tmp/fd/*.log /tmp/fd/*.jsonl $O/ 2>/dev/null; tail -8 $O/fd.txt; echo "fp8 deviation done at $(el) s"
fi
tar czf $OUT/c3-logs.tgz -C $O . ; ls -la $OUT
