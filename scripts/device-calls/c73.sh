# call 73 (session 27; branch next/s27, binaries in .devpack with main's hdpissa-train as
# .devbin/base/hdpissa-train): the flash kernels' heavy-tiles-first block order and the shared
# graph-capture helper. 1) the model suite (the new "block orders give the same bits" case and every
# flash test), the decoder suite (its decode-step graph now through capture_stream_graph) and the
# trainer suite (--cuda-graphs bit for bit against eager); 2) bench_flash_attn at B 2 and 8, both
# shapes, each kernel in both orders; 3) TinyLlama 2 x 512 x 8: HD-PiSSA K1 and LoRA, this branch
# against main's binary in the same call, PEFT + compile.
# Run as: bash scripts/device-calls/c73.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o73; mkdir -p $O
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
run_suites $O hdpissa_llama_cuda_tests:60 hdpissa_llama_decode_cuda_tests:60 hdpissa_cuda_train_tests:170
grep -h -E "ERROR|FAILED" $O/suites/*.log 2>/dev/null | head -12
for b in 2 8; do timeout 60 .devbin/bench_flash_attn --batch $b --shape all --reps 30 > $O/flash-b$b.txt 2>&1; done
cat $O/flash-b*.txt > $OUT/flash.txt; grep -E "^ |^[a-z]" $OUT/flash.txt | grep -E "default|bwd|all|B " | head -40
OUT=$O/t WORK=/tmp/tpt PREBUILT=$PWD/.devbin SHAPES=tinyllama MICRO_BATCHES=2 OURS_STEPS=8 \
  OURS_CONFIGS="hdpissa-K1 lora" BASELINE_BIN=$PWD/.devbin/base/hdpissa-train BASELINE_LABEL="main 838f4ea" \
  BASELINE_CONFIGS="hdpissa-K1 lora" PEFT_METHODS=lora-bf16-compile \
  DEADLINE_S=$(( END - 10 - $(el) )) scripts/throughput.sh > $O/t.txt 2>&1
cp $O/t/throughput.md $OUT/tinyllama-mb2.md 2>/dev/null; echo "tinyllama done at $(el) s"
grep -E "^\| (\*\*)?(ours|peft)" $O/t/throughput.md | head -8
tar czf $OUT/c73-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
