# call 1: every packed GPU suite (two streams in parallel), then the 34B fit if time is left
source scripts/device-calls/common.sh
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
O=/tmp/o1; mkdir -p $O
(OUT=$O/a HDPISSA_GPU_TEST_SCRATCH=/tmp/hs1 SUITES=hdpissa_cuda_train_tests timeout ${SUITE_T:-330} scripts/prebuilt-suites.sh > $O/a.txt 2>&1; echo "stream a rc $? done at $(el) s" >> $O/a.txt) &
(OUT=$O/b HDPISSA_GPU_TEST_SCRATCH=/tmp/hs2 SUITES="hdpissa_cuda_tests hdpissa_llama_cuda_tests hdpissa_llama_decode_cuda_tests" timeout ${SUITE_T:-330} scripts/prebuilt-suites.sh > $O/b.txt 2>&1; echo "stream b rc $? done at $(el) s" >> $O/b.txt) &
wait
cat $O/a.txt $O/b.txt; cp $O/a.txt $O/b.txt $OUT/
echo "suites done at $(el) s"
if (( $(el) < ${FIT_IF_BEFORE:-360} )); then
  OUT=$O/fit34 PREBUILT=$PWD/.devbin timeout $(( END - $(el) )) scripts/fit-34b.sh
  echo "fit rc $? done at $(el) s"; cp $O/fit34/fit34.md $OUT/ 2>/dev/null
fi
tar czf $OUT/c1-logs.tgz -C $O . ; ls -la $OUT
