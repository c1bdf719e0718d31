# call 100 (session 35; NOT RUN: two refused starts; c102 ran its parts with c101's): verify session 34's closing code (main at 6b95f8a and
# later) on a GPU and take issue 16's rows. 1) the decoder suite (Auto now runs the tensor-core
# kernel for bf16 GQA: its Auto test lines never ran on a GPU), the model suite and the trainer suite
# (the RMSNorm kernel now carries the PDL instructions, no-ops for training); 2) decode-bench at the
# TinyLlama, LLaMA-2-7B and LLaMA-3-8B-body shapes against transformers, GSM8K at 7B if time is left.
# Prefer an H200 for issue 16 (but never needs_h200 for timings: take what comes and say which).
# Build first (build/gpu-local, see the session notes): hdpissa_llama_decode_cuda_tests
# hdpissa_llama_cuda_tests hdpissa_cuda_train_tests hdpissa-generate hdpissa-eval; pack them with
# scripts/prebuilt-pack.sh. Run as: END_S=560 bash scripts/device-calls/c100.sh (carry .devpack, .devdata)
source scripts/device-calls/common.sh
O=/tmp/o100; mkdir -p $O; W=/tmp/hdb; mkdir -p $W
nvidia-smi --query-gpu=name --format=csv,noheader | head -1; cat .devbin/COMMIT
run_cases $O decode-tests hdpissa_llama_decode_cuda_tests 120 "*"
run_suites $O hdpissa_llama_cuda_tests:70  # (the trainer suite: c101, on next/prio-main = main + the stream priorities)
GS=" "; (( $(el) < END - 420 )) && GS=llama2-7b
OUT=$O/d PREBUILT=$PWD/.devbin WORK=$W SHAPES="tinyllama llama2-7b" BATCH=64 NEW_TOKENS=256 GSM8K_SHAPES="$GS" \
  GSM8K_TIMEOUT=150 OURS_TIMEOUT=60 HF_TIMEOUT=90 timeout $(( END - 5 - $(el) )) scripts/decode-bench.sh > $O/d.txt 2>&1
echo "decode-bench rc $? at $(el) s"; cat $O/d/decode-bench.md 2>/dev/null; cp $O/d/decode-bench.md $OUT/c100-decode-bench.md 2>/dev/null
tail -3 $O/d.txt
# On an H200 (issue 16's device): the 7B decode step with the bulk kernel's tiling and the split
# size around the defaults (32 keys x 2 stages, 512 keys per split), alternated, same prompts.
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 && [[ -f $W/llama2-7b-L32/config.json ]]; then
  decode_prompts $W/prompts-b64.jsonl
  for i in 1 2; do
    for v in "" HDPISSA_DECODE_BULK_TILE=32x3 HDPISSA_DECODE_BULK_TILE=64x2 HDPISSA_DECODE_CHUNK=256; do
      (( $(el) < END - 35 )) || break 2
      n=${v##*=}; decode_gen $W $W/llama2-7b-L32 $W/prompts-b64.jsonl "7b-${n:-default}-$i" $v
    done
  done
fi
rm -rf $W/llama3-8b-L32 $W/tinyllama-L22  # c101 (the same warm machine) reuses $W/llama2-7b-L32
echo "done at $(el) s"
