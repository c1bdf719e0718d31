# call 18 (plan for session 17; not run): def0325's unrun changes (the flash path's smaller scratch,
# the stride checks, raw non-RoPE copies, the poisoned row-layout test, the model-level MHA flash
# case) through the llama CUDA, trainer and decoder suites first — nothing else runs if the llama
# suite fails — then issue 20's rows without a same-call PEFT peer this session: TinyLlama 8 x 512
# and 2 x 512, each against PEFT + compile (~100 s of compile each on an H100).
# Run as: bash scripts/device-calls/c18.sh   (carry [".devpack", ".devdata"]; rebuild + repack first:
# the .devpack of session 16 holds ac7af43's binaries, not def0325's)
source scripts/device-calls/common.sh
O=/tmp/o18; mkdir -p $O
run_suites $O hdpissa_llama_cuda_tests:60
if ! grep -q "hdpissa_llama_cuda_tests: rc 0" $O/suites.txt; then
  tar czf $OUT/c18-logs.tgz -C $O . 2>/dev/null; echo "llama CUDA suite failed: stopping"; exit 1
fi
run_suites $O hdpissa_cuda_train_tests:120 hdpissa_llama_decode_cuda_tests:40
for mb in 8 2; do
  OUT=$O/t$mb WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=tinyllama MICRO_BATCHES=$mb \
    OURS_CONFIGS="hdpissa-K1 lora" PEFT_METHODS=lora-bf16-compile \
    DEADLINE_S=$(( mb == 8 ? (END - $(el)) / 2 : END - 10 - $(el) )) scripts/throughput.sh > $O/t$mb.txt 2>&1
  cp $O/t$mb/throughput.md $OUT/tiny-mb$mb.md 2>/dev/null; grep -E "rc |total" $O/t$mb/throughput.log
  echo "tiny mb$mb done at $(el) s"
done
mkdir -p $O/runs; cp -r /tmp/tpw/runs/. $O/runs/ 2>/dev/null
tar czf $OUT/c18-logs.tgz -C $O . 2>/dev/null; ls -la $OUT; echo "done at $(el) s"
