# call 29 (session 19): 1) the suites with this session's new code (CUDA library: CudaBackend::gemm_f32
# against float64, MutedLinear / AdapterLinear's fp32-gradient backward against float64, the low-rank
# DWU kernel's SR epilogue on 32-bit words against the host replay bit for bit; trainer: every GPU
# trainer test with the adapter gradients now written as fp32 sums; llama CUDA: the fused adapter
# kernels); 2) bench_adapter_grads (both adapter-gradient paths at every linear shape); 3)
# bench_dwu_lowrank's words experiment (binary of 942e19b: the library kernel before the port, against
# the words copy); 4) TinyLlama 8 x 512: HD-PiSSA K1 and LoRA at this commit and at 942e19b (the
# baseline binary), PEFT + compile, one table.
# Run as: bash scripts/device-calls/c29.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o29; mkdir -p $O
run_suites $O hdpissa_cuda_tests:150 hdpissa_cuda_train_tests:120 hdpissa_llama_cuda_tests:60
grep -h -E "ERROR|FAILED" $O/suites/*.log | head -20
timeout 90 .devbin/bench_adapter_grads --reps 20 > $O/adapter-grads.txt 2>&1; echo "bench rc $? at $(el) s"
grep -v JSON $O/adapter-grads.txt; cp $O/adapter-grads.txt $OUT/
timeout 60 .devbin/bench_dwu_lowrank-942e19b --reps 20 --kd 32 --policy sr --rows-per-thread 8 > $O/lowrank-words.txt 2>&1
echo "words rc $? at $(el) s"; grep -E "words|7B" $O/lowrank-words.txt; cp $O/lowrank-words.txt $OUT/
if (( END - $(el) > 150 )); then
  OUT=$O/t8 WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=tinyllama MICRO_BATCHES=8 \
    OURS_CONFIGS="hdpissa-K1 lora" BASELINE_BIN=$PWD/.devbin/hdpissa-train-942e19b BASELINE_LABEL=942e19b \
    BASELINE_CONFIGS="hdpissa-K1 lora" PEFT_METHODS=lora-bf16-compile \
    DEADLINE_S=$(( END - 5 - $(el) )) scripts/throughput.sh > $O/t8.txt 2>&1
  cp $O/t8/throughput.md $OUT/tiny-mb8.md 2>/dev/null; echo "tiny mb8 done at $(el) s"
  grep -E "^\| (\*\*)?(ours|peft)" $O/t8/throughput.md | head -6
fi
tar czf $OUT/c29-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
