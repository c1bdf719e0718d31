# call 77 (written in session 27 for branch next/adapter-split, i.e. docs/pending/next-adapter-split.patch
# on main: AdapterLinear::backward as backward_u / backward_dx / backward_gradients, which LoRA /
# PiSSA's per-target second-stream path now calls instead of repeating the GEMMs; build
# hdpissa_cuda_train_tests and hdpissa-train and pack them): the trainer suite, whose second-stream
# case checks LoRA and PiSSA bit for bit against one stream (and against the CPU engine elsewhere).
# Run as: bash scripts/device-calls/c77.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o77; mkdir -p $O
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
run_suites $O hdpissa_cuda_train_tests:200
grep -h -E "ERROR|FAILED" $O/suites/*.log 2>/dev/null | head -12
tar czf $OUT/c77-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
