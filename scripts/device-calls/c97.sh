# NOT RUN: superseded by c98.sh (session 34), which runs all of this plus the PDL A/B.
# call 97 (session 33): the bulk-copy cache attention as the decoder's default (Auto: sm_90, groups
# <= 4; 16-key tiles x 2 stages; 512 keys per split where a step has >= 2048 (row, kv head) pairs,
# else 256; rows by descending position). 1) bench_cache_attention 7B / 8B heads (adds the kernel
# compiled for 8 blocks per SM); 2) the decoder suite and the trainer suite's engine-generation case;
# 3) 7B A/B: the default against session 32's configuration (HDPISSA_DECODE_ATTENTION=fused,
# HDPISSA_DECODE_CHUNK=256, HDPISSA_DECODE_ORDER=0), alternated; 4) decode-bench.sh at both shapes
# against transformers, with the GSM8K test at 7B if time is left.
# (Trimmed after refused starts: one A/B pair twice, GSM8K only with 300 s left.)
# Build first: bench_cache_attention hdpissa_llama_decode_cuda_tests hdpissa_cuda_train_tests
# hdpissa-generate hdpissa-eval; pack them. Run as: END_S=540 bash scripts/device-calls/c97.sh
source scripts/device-calls/common.sh
O=/tmp/o97; mkdir -p $O; W=/tmp/hdb; mkdir -p $W
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
for sh in 7b 8b; do
  timeout 60 .devbin/bench_cache_attention --shape $sh > $OUT/c97-bench-$sh.txt 2>&1; echo "bench $sh rc $? at $(el) s"
  grep -v JSON $OUT/c97-bench-$sh.txt | tail -n +4
done
run_cases $O decode-tests hdpissa_llama_decode_cuda_tests 150 "*"
run_cases $O engine-gen hdpissa_cuda_train_tests 120 "*batched GPU generation*"
decode_prompts $W/prompts-b64.jsonl
M7=$W/llama2-7b-L32
python3 bench/e2e/make_model.py $M7 --preset llama2-7b --layers 32 --seed 0 > $O/make.log 2>&1; echo "make_model rc $? at $(el) s"
for i in 1 2; do
  (( i == 1 || $(el) < END - 160 )) || break
  decode_gen $W $M7 $W/prompts-b64.jsonl s32 HDPISSA_DECODE_ATTENTION=fused HDPISSA_DECODE_CHUNK=256 HDPISSA_DECODE_ORDER=0
  decode_gen $W $M7 $W/prompts-b64.jsonl default
done
GS=" "; (( $(el) < END - 300 )) && GS=llama2-7b
SH="llama2-7b"; (( $(el) < END - 150 )) && SH="tinyllama llama2-7b"
OUT=$O/d PREBUILT=$PWD/.devbin WORK=$W SHAPES="$SH" BATCH=64 NEW_TOKENS=256 GSM8K_SHAPES="$GS" GSM8K_TIMEOUT=200 \
  OURS_TIMEOUT=60 HF_TIMEOUT=100 timeout $(( END - 5 - $(el) )) scripts/decode-bench.sh > $O/d.txt 2>&1
echo "decode-bench rc $? at $(el) s"; cat $O/d/decode-bench.md 2>/dev/null; cp $O/d/decode-bench.md $OUT/c97-decode-bench.md 2>/dev/null
tail -3 $O/d.txt
echo "done at $(el) s"
