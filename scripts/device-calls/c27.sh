# call 27 (session 18; NOT RUN: no H100 could be started and too little time was left for another kind; c28.sh includes it): the fused adapter-gradient kernels against
# MutedLinear's cuBLAS path at every linear shape the trainer runs (bench_adapter_grads: TinyLlama
# and LLaMA-2-7B at N = 4096 tokens, i.e. one 8 x 512 micro-batch), to find where the trainer's
# 3-5 % loss with them on comes from (c26).
# Run as: END_S=200 bash scripts/device-calls/c27.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o27; mkdir -p $O
timeout $(( END - $(el) )) .devbin/bench_adapter_grads --reps 20 > $O/adapter-grads.txt 2>&1; echo "bench rc $? at $(el) s"
grep -v JSON $O/adapter-grads.txt; cp $O/adapter-grads.txt $OUT/
echo "done at $(el) s"
