# call 88 (session 31, branch next/graphs-overlap = main + the DWU overlap under --cuda-graphs: the
# captured forward holds one external event wait node per target). 1) the trainer's overlap case
# (11 configurations, 3 with --cuda-graphs: replays and no failed capture, bit for bit against the
# joined step, every side update behind a spin) and the --cuda-graphs case; 2) TinyLlama 2 x 512 x 8
# with --cuda-graphs: HD-PiSSA K1 (overlap) against +joined.
# Run as: END_S=160 bash scripts/device-calls/c88.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o88; mkdir -p $O
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
export HDPISSA_DATA=$PWD/.devdata HDPISSA_GPU_TEST_DATA=$PWD/.devdata HDPISSA_GPU_TEST_SCRATCH=/tmp/hs
mkdir -p /tmp/hs
timeout 100 .devbin/hdpissa_cuda_train_tests --no-intro -tc="*HDPISSA_DWU_OVERLAP*,*--cuda-graphs*" > $O/train-tests.txt 2>&1
echo "trainer cases (overlap, cuda graphs) rc $? at $(el) s"
grep -E "ERROR|THREW|test cases|assertions" $O/train-tests.txt | head -20; cp $O/train-tests.txt $OUT/
env OUT=$O/tiny2 WORK=/tmp/tpt PREBUILT=$PWD/.devbin OURS_STEPS=6 SHAPES=tinyllama MICRO_BATCHES=2 PEFT_METHODS=" " \
  OURS_CONFIGS="hdpissa-K1+graphs hdpissa-K1+graphs+joined" DEADLINE_S=$(( END - 5 - $(el) )) scripts/throughput.sh > $O/tiny2.txt 2>&1
cp $O/tiny2/throughput.md $OUT/tiny2.md 2>/dev/null
grep -E "^\| (\*\*)?(ours|peft)|^#" $O/tiny2/throughput.md | head -6
echo "done at $(el) s"
