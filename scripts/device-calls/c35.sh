# call 35 (session 20): 1) the trainer suite with the shared-input backward's accumulation fix (c33
# found the gB sums overwritten per micro-batch: every trainer test against the CPU caught it);
# 2) TinyLlama 8 x 512 x 2: HD-PiSSA K1 and LoRA at this commit and HD-PiSSA at 41a8cf5 (baseline
# binary) against PEFT LoRA + torch.compile; 3) the loss section kernel by kernel (nsys trace):
# the bare model (20 % of every row masked) and the trainer, gaps and kernel times (loss-trace.py).
# Run as: bash scripts/device-calls/c35.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o35; mkdir -p $O
run_suites $O hdpissa_cuda_train_tests:130
grep -h -E "ERROR|FAILED|rel dW diff|cuBLAS path" $O/suites/*.log | cut -c 60-220 | head -30
if (( END - $(el) > 200 )); then
  OUT=$O/t8 WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=tinyllama MICRO_BATCHES=8 \
    OURS_CONFIGS="hdpissa-K1 lora" BASELINE_BIN=$PWD/.devbin/hdpissa-train-41a8cf5 BASELINE_LABEL=41a8cf5 \
    BASELINE_CONFIGS="hdpissa-K1" PEFT_METHODS=lora-bf16-compile \
    DEADLINE_S=$(( END - 100 - $(el) )) scripts/throughput.sh > $O/t8.txt 2>&1
  cp $O/t8/throughput.md $OUT/tiny-mb8.md 2>/dev/null; echo "tiny mb8 done at $(el) s"
  grep -E "^\| (\*\*)?(ours|peft)" $O/t8/throughput.md | head -6
fi
if command -v nsys > /dev/null && (( END - $(el) > 60 )); then
  D=.devdata/throughput
  timeout 40 nsys profile -o $O/bare --force-overwrite true --stats=false .devbin/bench_llama_cuda --shape tinyllama \
    --batch 8 --seq 512 --steps 3 --warmup 1 --prompt-fraction 0.2 > $O/nsys-bare.log 2>&1
  timeout 60 nsys profile -o $O/tr --force-overwrite true --stats=false .devbin/hdpissa-train --device cuda --dtype bf16 \
    --model /tmp/tpw/tinyllama --tokenizer $D/tokenizer.model --data $D/train.jsonl --method hdpissa --rank 16 --alpha 16 \
    --targets q,k,v,o,gate,up,down --svd randomized --micro-batch 8 --grad-accum 2 --max-len 512 --max-steps 3 \
    --lr 2e-5 --warmup-ratio 0 --log-every 1 > $O/nsys-tr.log 2>&1
  for x in bare tr; do
    nsys stats --report cuda_gpu_trace --format csv $O/$x.nsys-rep > $O/$x-trace.csv 2>/dev/null
    echo "== $x"; python3 scripts/loss-trace.py $O/$x-trace.csv | head -40
  done | tee $OUT/loss-trace.txt
  rm -f $O/*.nsys-rep $O/*.sqlite; gzip -f $O/*-trace.csv
else
  echo "nsys: $(command -v nsys || echo none) at $(el) s"
fi
tar czf $OUT/c35-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
