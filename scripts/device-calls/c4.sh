# call 4 (session 13's plan; not run: no device was lent in session 13): every packed GPU suite —
# the two session-12 failures mended blind, the new ledger / bf16-embedding / chunked-stage / trainer
# memory-parts cases, the DWU with one copy of its factors and no receive buffer — one after the
# other. Then call 5 (c5.sh) measures the memory. Run as: bash scripts/device-calls/c4.sh
# (carry [".devpack", ".devdata"]; binaries packed at >= e74c88a).
source scripts/device-calls/common.sh
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
O=/tmp/o4; mkdir -p $O
# One suite at a time: several tests compare device-wide peaks (cudaMemGetInfo), which a second
# process on the GPU would disturb. The trainer suite first (the mended Kahan case, the ledger case).
for t in hdpissa_cuda_train_tests:${T_TRAIN:-300} hdpissa_llama_cuda_tests:60 hdpissa_cuda_tests:${T_CUDA:-120} hdpissa_llama_decode_cuda_tests:60; do
  s=${t%%:*}; lim=${t##*:}; left=$(( END - 5 - $(el) )); (( left < lim )) && lim=$left
  (( lim > 10 )) || { echo "$s: SKIPPED (deadline)"; continue; }
  OUT=$O HDPISSA_GPU_TEST_SCRATCH=/tmp/hs SUITES=$s timeout $lim scripts/prebuilt-suites.sh >> $O/suites.txt 2>&1
  echo "$s rc $? at $(el) s" >> $O/suites.txt
done
cat $O/suites.txt; cp $O/suites.txt $OUT/
grep -h "peak parts" -r $O 2>/dev/null | head -3
echo "suites done at $(el) s"
tar czf $OUT/c4-logs.tgz -C $O . ; ls -la $OUT
