# call 106 (planned for session 36; not run): 1) the model and trainer suites on session 35's closing
# code (the second stream's priority high by default, read by the trainer and passed to
# AdapterSideStream's constructor: not run on a GPU in that form); 2) where the 7B 8 x 512 step goes
# now, bf16 and --compute fp8 --keep-swiglu (scripts/profile-step.sh: bare model vs HD-PiSSA K1), for
# issue 20's FP8 1.6x; 3) on an H200 only: issue 16's 7B decode row (decode-bench) and the bulk
# tiling sweep (c100's loop). Build first: hdpissa_llama_cuda_tests hdpissa_cuda_train_tests
# hdpissa-train bench_llama_cuda hdpissa-generate hdpissa-eval; pack; .devdata as in session 35
# (debs, stories260K(-hf), gsm8k, llama2_tokenizer, throughput from `scripts/throughput.sh prepare`).
# Run as: END_S=560 bash scripts/device-calls/c106.sh (carry .devpack, .devdata)
source scripts/device-calls/common.sh
O=/tmp/o106; mkdir -p $O; W=/tmp/hdb; mkdir -p $W
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1); echo "$GPU"; cat .devbin/COMMIT
run_suites $O hdpissa_llama_cuda_tests:70 hdpissa_cuda_train_tests:230
if [[ "$GPU" == *H200* ]]; then
  OUT=$O/d PREBUILT=$PWD/.devbin WORK=$W SHAPES="llama2-7b" BATCH=64 NEW_TOKENS=256 GSM8K_SHAPES=" " \
    OURS_TIMEOUT=60 HF_TIMEOUT=90 timeout 200 scripts/decode-bench.sh > $O/d.txt 2>&1
  echo "decode-bench rc $? at $(el) s"; cat $O/d/decode-bench.md 2>/dev/null; cp $O/d/decode-bench.md $OUT/c106-decode-bench.md 2>/dev/null
  decode_prompts $W/prompts-b64.jsonl
  for v in "" HDPISSA_DECODE_BULK_TILE=32x3 HDPISSA_DECODE_BULK_TILE=64x2 HDPISSA_DECODE_CHUNK=256 ""; do
    (( $(el) < END - 200 )) || break
    n=${v##*=}; decode_gen $W $W/llama2-7b-L32 $W/prompts-b64.jsonl "7b-${n:-default}" $v
  done
fi
run_profile $O $W 7b8 SHAPE=llama2-7b MB=8 GA=2 STEPS=3 CONFIGS=hdpissa-K1
run_profile $O $W 7b8fp8 SHAPE=llama2-7b MB=8 GA=2 STEPS=3 CONFIGS=hdpissa-K1 EXTRA="--compute fp8 --keep-swiglu"
tar czf $OUT/c106-logs.tgz -C $O . 2>/dev/null
echo "done at $(el) s"
