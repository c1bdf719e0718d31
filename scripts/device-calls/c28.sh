# call 28 (written in session 18 for the next session's first call; binaries: rebuild and repack at
# HEAD, or check .devbin/COMMIT): 1) the suites with session 18's last, unrun tests (CUDA library:
# HDPISSA_CUDA_DWU_ROWS resolution with the environment restored; trainer: HDPISSA_LOSS_CHUNK_ROWS
# errors and a 3-row chunk's losses); 2) bench_adapter_grads (c27's plan: the fused adapter kernels
# against MutedLinear's cuBLAS path at every TinyLlama / 7B linear shape, to find where the trainer
# loses 3-5 % with them on); 3) bench_dwu_lowrank's words experiment (the SR epilogue on 32-bit
# words: same bits? faster?); 4) TinyLlama 8 x 512 against PEFT + compile, if time is left.
# Run as: bash scripts/device-calls/c28.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o28; mkdir -p $O
run_suites $O hdpissa_cuda_tests:150 hdpissa_cuda_train_tests:120
grep -h -E "ERROR|FAILED" $O/suites/*.log | head -20
timeout 90 .devbin/bench_adapter_grads --reps 20 > $O/adapter-grads.txt 2>&1; echo "bench rc $? at $(el) s"
grep -v JSON $O/adapter-grads.txt; cp $O/adapter-grads.txt $OUT/
# the DWU SR epilogue on 32-bit words (bench-local experiment, session 18): bits against the
# library kernel, then both timed, kd 32 at every LLaMA shape
timeout 60 .devbin/bench_dwu_lowrank --reps 20 --kd 32 --policy sr --rows-per-thread 8 > $O/lowrank-words.txt 2>&1
echo "words rc $? at $(el) s"; grep -E "words|7B" $O/lowrank-words.txt; cp $O/lowrank-words.txt $OUT/
if (( END - $(el) > 110 )); then
  OUT=$O/t8 WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=tinyllama MICRO_BATCHES=8 \
    OURS_CONFIGS="hdpissa-K1 hdpissa-K1+fused" PEFT_METHODS=lora-bf16-compile \
    DEADLINE_S=$(( END - 5 - $(el) )) scripts/throughput.sh > $O/t8.txt 2>&1
  cp $O/t8/throughput.md $OUT/tiny-mb8.md 2>/dev/null; echo "tiny mb8 done at $(el) s"
  grep -E "^\| (\*\*)?(ours|peft)" $O/t8/throughput.md | head -3
fi
tar czf $OUT/c28-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
