# call 20 (session 17): the SR stream with four draws per hash (86444a6) — the CUDA library suite
# (the W-precision kernels against the CPU rule, bit for bit), the trainer and llama suites — then the
# optimizer step's GPU time, old binary (446eea4, carried as .devpack/hdpissa-train-446eea4.xz) and
# new in one call: scripts/profile-step.sh at 7B 8 x 512 x 2 and TinyLlama 8 x 512 x 2, HD-PiSSA K1.
# Run as: bash scripts/device-calls/c20.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o20; mkdir -p $O /tmp/oldbin
run_suites $O hdpissa_cuda_tests:120 hdpissa_llama_cuda_tests:60 hdpissa_cuda_train_tests:120
xz -dc .devpack/hdpissa-train-446eea4.xz > /tmp/oldbin/hdpissa-train; chmod +x /tmp/oldbin/hdpissa-train
ln -sf $PWD/.devbin/bench_llama_cuda /tmp/oldbin/bench_llama_cuda
for sh in llama2-7b tinyllama; do
  for v in old new; do
    P=$PWD/.devbin; [[ $v == old ]] && P=/tmp/oldbin
    OUT=$O/p-$sh-$v WORK=/tmp/tpw PREBUILT=$P SHAPE=$sh MB=8 GA=2 STEPS=4 CONFIGS="hdpissa-K1" \
      timeout 120 scripts/profile-step.sh > $O/p-$sh-$v.txt 2>&1
    echo "== $sh $v"; grep -E "optimizer|\*\*step|linears bwd" $O/p-$sh-$v/profile.md
    cp $O/p-$sh-$v/profile.md $OUT/profile-$sh-$v.md 2>/dev/null
  done
  echo "$sh done at $(el) s"
done
tar czf $OUT/c20-logs.tgz -C $O . 2>/dev/null; ls -la $OUT; echo "done at $(el) s"
