# call 98 (session 33, after refused starts left ≈ 4 minutes): c97's essentials on the binaries of
# 184defe (the bulk cache attention as the decoder's default): bench_cache_attention at the 7B heads
# (adds the 8-blocks-per-SM build), the decoder suite, the trainer suite's engine-generation case;
# then, with time left, the 7B A/B of c97. Run as: END_S=110 bash scripts/device-calls/c98.sh
source scripts/device-calls/common.sh
O=/tmp/o98; mkdir -p $O
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
timeout 30 .devbin/bench_cache_attention --shape 7b > $OUT/c98-bench-7b.txt 2>&1; echo "bench 7b rc $? at $(el) s"
grep -v JSON $OUT/c98-bench-7b.txt | tail -n +4
run_cases $O decode-tests hdpissa_llama_decode_cuda_tests 60 "*"
run_cases $O engine-gen hdpissa_cuda_train_tests 60 "*batched GPU generation*"
echo "done at $(el) s"
