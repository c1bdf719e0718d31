# call 108 (planned in session 36, no device was lent; not run): the GPU suites on one branch that
# holds the three pending patches (docs/pending/README.md): next-graph-node-priority (graph replays
# keep the second stream's priority), next-decode-launch (the cache-attention launchers' shared
# helper) and next-fp8-refresh (each FP8 copy of W quantised behind its update on the DWU's apply
# stream). The trainer suite's overlap case runs the FP8 copies both ways (HDPISSA_FP8_REFRESH_ON_APPLY
# 1 and 0) against the joined run bit for bit; the decoder suite checks every cache-attention kernel;
# the library's bf16-W-storage DWU case the deferred apply streams against the CPU. Also session 35's closing code (c106's first part: the
# second stream's priority high by default, passed to AdapterSideStream's constructor), which the
# branch contains. Build first, on `git checkout -b next/s36 && git am docs/pending/next-*.patch`:
# hdpissa_llama_cuda_tests hdpissa_llama_decode_cuda_tests hdpissa_cuda_train_tests hdpissa_cuda_tests
# hdpissa-train hdpissa-eval hdpissa-generate; pack; .devdata as in session 35.
# Run as: END_S=560 bash scripts/device-calls/c108.sh (carry .devpack, .devdata)
source scripts/device-calls/common.sh
O=/tmp/o108; mkdir -p $O
nvidia-smi --query-gpu=name --format=csv,noheader | head -1; cat .devbin/COMMIT
run_suites $O hdpissa_llama_decode_cuda_tests:120 hdpissa_cuda_train_tests:260 hdpissa_llama_cuda_tests:80
run_cases $O lib-dwu hdpissa_cuda_tests 90 "DWU with a bf16 W storage*"
tar czf $OUT/c108-logs.tgz -C $O . 2>/dev/null
echo "done at $(el) s"
