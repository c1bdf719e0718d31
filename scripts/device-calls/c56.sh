# call 56 (written in session 24 for the next session; branch next/s25 = main + next/review24 +
# next/fold-gpu; .devpack: its hdpissa-train, hdpissa_cuda_tests, hdpissa_llama_cuda_tests and
# hdpissa_cuda_train_tests — check .devbin/COMMIT): none of this has run on a GPU.
#  - the closing review's changes (next/review24): saved activations on 128-byte boundaries, no
#    SwiGLU in a checkpointing recompute, the amax hints dropped at each pass's start; the FP8-hint
#    test on more cases (stories260K's partial FP8, K = 2, --targets q,v); the kernel amax test at
#    SwiGLU's grid cap, with -0 and NaN;
#  - the fold's library piece on the GPU (next/fold-gpu): "FoldedMutedLinears on bf16" against
#    float64 in the CUDA library suite.
# Merge next/s25 into main if the three suites pass.
# Run as: bash scripts/device-calls/c56.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o56; mkdir -p $O
run_suites $O hdpissa_cuda_tests:120 hdpissa_llama_cuda_tests:60 hdpissa_cuda_train_tests:200
grep -h -E "ERROR|FAILED|producer-kept amax:|peak device bytes without|FoldedMutedLinears" $O/suites/*.log 2>/dev/null | head -20
tar czf $OUT/c56-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
