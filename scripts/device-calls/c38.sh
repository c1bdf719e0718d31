# call 38 (written in session 20 for the next session, on branch next/loss-parts; build and pack
# there first: hdpissa-train bench_llama_cuda hdpissa_cuda_train_tests): the loss section in its
# parts (logits GEMMs, gathers + cross-entropy, dX GEMMs + scatters) in the bare model and the
# trainer, to tell which part makes the trainer's loss +1.7 ms per TinyLlama 8 x 512 micro-batch
# (session 20: the section's own kernels and cuBLASLt's algorithms are the same on both sides).
# Run as: bash scripts/device-calls/c38.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o38; mkdir -p $O
run_suites $O hdpissa_cuda_train_tests:130
grep -h -E "ERROR|FAILED" $O/suites/*.log | head -20
for shape in tinyllama llama2-7b; do
  (( END - $(el) > 60 )) || break
  OUT=$O/prof-$shape WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPE=$shape MB=8 GA=2 STEPS=4 CONFIGS="hdpissa-K1 lora" \
    BARE_ARGS="--prompt-fraction 0.2" timeout $(( END - 10 - $(el) )) scripts/profile-step.sh > $O/prof-$shape.txt 2>&1
  echo "$shape profile rc $? at $(el) s"; cat $O/prof-$shape/profile.md; cp $O/prof-$shape/profile.md $OUT/profile-$shape.md 2>/dev/null
done
tar czf $OUT/c38-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
