# call 15 (session 16): the attention layout kernels' 4-wide forms (kernels_llama.cuh) and the flash
# forward's register target at head dim 64: the llama CUDA suite (their bitwise tests, the model
# against the CPU), the kernels alone, then the bare model step at both shapes, micro-batch 8 and 2,
# to compare with c14 (session-15 kernels, same binaries otherwise). Binaries built here, carried
# in .devflash. Run as: bash scripts/device-calls/c15.sh   (carry [".devflash"])
set -uo pipefail
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
B=$PWD/.devflash; O=/tmp/o15; mkdir -p $O
nvidia-smi --query-gpu=name --format=csv,noheader | tee $O/gpu.txt
timeout 200 $B/hdpissa_llama_cuda_tests > $O/llama-cuda-tests.txt 2>&1; echo "llama cuda tests rc $? at $(el) s" | tee -a $O/llama-cuda-tests.txt
grep -E "test cases|assertions|ERROR|FAILED" $O/llama-cuda-tests.txt | head -20
timeout 60 $B/bench_flash_attn --batch 8 > $O/flash-bench-b8.txt 2>&1; echo "rc $?" >> $O/flash-bench-b8.txt; cat $O/flash-bench-b8.txt
for sh in llama2-7b tinyllama; do for mb in 8 2; do
  timeout 120 $B/bench_llama_cuda --shape $sh --batch $mb --steps 10 > $O/bare-$sh-b$mb.txt 2>&1; echo "rc $?" >> $O/bare-$sh-b$mb.txt
  echo "== $sh b$mb"; grep -E "median|achieved|attention|linears|norms|loss|rc " $O/bare-$sh-b$mb.txt
done; done
echo "done at $(el) s"
tar czf $OUT/c15.tgz -C $O .; ls -la $OUT
