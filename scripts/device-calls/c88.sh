# call 88 (session 31, branch next/graphs-overlap = main + the DWU overlap under --cuda-graphs: the
# captured forward holds one external event wait node per target). 1) the trainer's overlap case
# (11 configurations, 3 with --cuda-graphs: replays and no failed capture, bit for bit against the
# joined step, every side update behind a spin) and the --cuda-graphs case; 2) TinyLlama 2 x 512 x 8
# with --cuda-graphs: HD-PiSSA K1 (overlap) against +joined.
# Run as: END_S=160 bash scripts/device-calls/c88.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o88; mkdir -p $O
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
run_cases $O train-tests hdpissa_cuda_train_tests 100 "*HDPISSA_DWU_OVERLAP*,*--cuda-graphs*"
throughput $O tiny2 SHAPES=tinyllama MICRO_BATCHES=2 PEFT_METHODS=" " \
  OURS_CONFIGS="hdpissa-K1+graphs hdpissa-K1+graphs+joined"
echo "done at $(el) s"
