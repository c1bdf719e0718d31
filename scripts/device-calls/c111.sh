# call 111 (session 37; c108's plan, run here): the GPU suites on next/s36 — main + the three pending
# patches of session 36 (docs/pending/README.md): next-graph-node-priority (graph replays keep the
# second stream's priority), next-decode-launch (the cache-attention launchers' shared helper) and
# next-fp8-refresh (each FP8 copy of W quantised behind its update on the DWU's apply stream; the
# trainer suite's overlap case runs the FP8 copies both ways against the joined run bit for bit);
# the decoder suite checks every cache-attention kernel; the library's bf16-W-storage DWU case the
# deferred apply streams against the CPU. Then where the 7B 8 x 512 step goes (profile-step.sh: bare
# model vs HD-PiSSA K1), --compute fp8 --keep-swiglu and bf16, for issue 20's FP8 1.6x.
# Build: hdpissa_llama_cuda_tests hdpissa_llama_decode_cuda_tests hdpissa_cuda_train_tests
# hdpissa_cuda_tests hdpissa-train hdpissa-eval hdpissa-generate bench_llama_cuda; pack; .devdata.
# Run as: END_S=560 bash scripts/device-calls/c111.sh (carry .devpack, .devdata)
source scripts/device-calls/common.sh
O=/tmp/o111; mkdir -p $O
nvidia-smi --query-gpu=name --format=csv,noheader | head -1; cat .devbin/COMMIT
run_suites $O hdpissa_llama_decode_cuda_tests:120 hdpissa_cuda_train_tests:230 hdpissa_llama_cuda_tests:80
run_cases $O lib-dwu hdpissa_cuda_tests 90 "DWU with a bf16 W storage*"
run_profile $O /tmp/tpt 7b8fp8 SHAPE=llama2-7b MB=8 GA=2 STEPS=3 CONFIGS=hdpissa-K1 EXTRA="--compute fp8 --keep-swiglu"
run_profile $O /tmp/tpt 7b8 SHAPE=llama2-7b MB=8 GA=2 STEPS=3 CONFIGS=hdpissa-K1
tar czf $OUT/c111-logs.tgz -C $O . 2>/dev/null
echo "done at $(el) s"
