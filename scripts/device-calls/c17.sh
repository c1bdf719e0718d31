# call 17 (session 16): the flash kernels' row-layout operands (O out, dO in, dQ / MHA dK, dV as
# bf16 rows) and the register-cached RMSNorm kernels. The llama CUDA suite first (their bitwise
# tests against the previous path; the model against the CPU) — on a failure nothing else runs —
# then the bare model step at both shapes, 8 x 512 (to compare with c15: the layout kernels alone),
# issue 20's 7B 8 x 512 row against PEFT + compile in the same call, then the trainer and decoder
# suites in the time left (the session's last 528 s of device time: END_S=430).
# Run as: END_S=430 bash scripts/device-calls/c17.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o17; mkdir -p $O
run_suites $O hdpissa_llama_cuda_tests:60
if ! grep -q "hdpissa_llama_cuda_tests: rc 0" $O/suites.txt; then
  tar czf $OUT/c17-logs.tgz -C $O . 2>/dev/null; echo "llama CUDA suite failed: stopping"; exit 1
fi
for sh in llama2-7b tinyllama; do for mb in 8; do
  timeout 60 .devbin/bench_llama_cuda --shape $sh --batch $mb --steps 10 > $O/bare-$sh-b$mb.txt 2>&1; echo "rc $?" >> $O/bare-$sh-b$mb.txt
  echo "== $sh b$mb"; grep -E "median|achieved /|attention|norms|rc " $O/bare-$sh-b$mb.txt
done; done
echo "bare done at $(el) s"
OUT=$O/t8 WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=llama2-7b MICRO_BATCHES=8 \
  OURS_CONFIGS="hdpissa-K1 lora" PEFT_METHODS=lora-bf16-compile \
  DEADLINE_S=$(( END - 80 - $(el) )) scripts/throughput.sh > $O/t8.txt 2>&1
cp $O/t8/throughput.md $OUT/7b-mb8.md 2>/dev/null; grep -E "rc |total" $O/t8/throughput.log; echo "7b mb8 done at $(el) s"
grep -E "^\| (\*\*)?(ours|peft)" $O/t8/throughput.md | head
(( END - $(el) > 95 )) && run_suites $O hdpissa_cuda_train_tests:$(( END - 15 - $(el) ))
(( END - $(el) > 15 )) && run_suites $O hdpissa_llama_decode_cuda_tests:$(( END - 3 - $(el) ))
mkdir -p $O/runs; cp -r /tmp/tpw/runs/. $O/runs/ 2>/dev/null
tar czf $OUT/c17-logs.tgz -C $O . 2>/dev/null; ls -la $OUT; echo "done at $(el) s"
