# call 4 (session 13's plan; not run: no device was lent in session 13): every packed GPU suite —
# the two session-12 failures mended blind, the new ledger / bf16-embedding / chunked-stage / trainer
# memory-parts cases, the DWU with one copy of its factors and no receive buffer — in two parallel
# streams. Then call 5 (c5.sh) measures the memory. Run as: bash scripts/device-calls/c4.sh
# (carry [".devpack", ".devdata"]; binaries packed at >= 283e9eb).
source scripts/device-calls/common.sh
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
O=/tmp/o4; mkdir -p $O
(OUT=$O/a HDPISSA_GPU_TEST_SCRATCH=/tmp/hs1 SUITES=hdpissa_cuda_train_tests timeout ${SUITE_T:-420} scripts/prebuilt-suites.sh > $O/a.txt 2>&1; echo "stream a rc $? done at $(el) s" >> $O/a.txt) &
(OUT=$O/b HDPISSA_GPU_TEST_SCRATCH=/tmp/hs2 SUITES="hdpissa_cuda_tests hdpissa_llama_cuda_tests hdpissa_llama_decode_cuda_tests" timeout ${SUITE_T:-420} scripts/prebuilt-suites.sh > $O/b.txt 2>&1; echo "stream b rc $? done at $(el) s" >> $O/b.txt) &
wait
cat $O/a.txt $O/b.txt; cp $O/a.txt $O/b.txt $OUT/
grep -h "peak parts" -r $O 2>/dev/null | head -3
echo "suites done at $(el) s"
tar czf $OUT/c4-logs.tgz -C $O . ; ls -la $OUT
