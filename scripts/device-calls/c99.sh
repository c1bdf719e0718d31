# call 99 (session 34): the tensor-core GQA cache attention (cache_attention_mma, bf16, groups 2-8,
# hd 64 / 128; opt-in HDPISSA_DECODE_ATTENTION=mma). 1) bench_cache_attention at LLaMA-3-8B and
# TinyLlama heads (mma rows: chunk x stages, with their normalised difference from the fused kernel);
# 2) the decoder suite (the mma kernel against float64, its stages bit for bit, bf16 decoding with it
# against the CPU); 3) decode A/B at the TinyLlama shape and the LLaMA-3-8B body (make_model.py
# --preset llama3-8b: vocab 32000), default vs mma, alternated.
# Build first: hdpissa_llama_decode_cuda_tests bench_cache_attention hdpissa-generate; pack them.
# Run as: END_S=540 bash scripts/device-calls/c99.sh
source scripts/device-calls/common.sh
O=/tmp/o99; mkdir -p $O; W=/tmp/hdb; mkdir -p $W
nvidia-smi --query-gpu=name --format=csv,noheader | head -1; cat .devbin/COMMIT
for sh in 8b tiny; do
  timeout 60 .devbin/bench_cache_attention --shape $sh > $OUT/c99-bench-$sh.txt 2>&1; echo "bench $sh rc $? at $(el) s"
  grep -v JSON $OUT/c99-bench-$sh.txt | tail -n +4
done
run_cases $O decode-tests hdpissa_llama_decode_cuda_tests 200 "*"
decode_prompts $W/prompts-b64.jsonl
for m in tinyllama llama3-8b; do
  (( $(el) < END - 120 )) || break
  python3 bench/e2e/make_model.py $W/$m --preset $m --seed 0 > $O/make-$m.log 2>&1; echo "make_model $m rc $? at $(el) s"
  for i in 1 2; do
    (( i == 1 || $(el) < END - 60 )) || break
    decode_gen $W $W/$m $W/prompts-b64.jsonl $m-default
    decode_gen $W $W/$m $W/prompts-b64.jsonl $m-mma HDPISSA_DECODE_ATTENTION=mma
  done
  grep -h "attention\|kernel" $W/g-$m-mma.log | head -3
  rm -rf $W/$m
done
echo "done at $(el) s"
