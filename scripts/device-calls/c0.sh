# call 0 (one call, if only one comes): decode + model suites, the 7B decode bench, the 34B fit, then 7B fp8 throughput if time is left
# Session 12's device calls (run from the repository root on the GPU machine, carry [".devpack", ".devdata"]):
# c0 decode + model suites, the 7B decode bench, the 34B fit; c1 every suite, then the fit; c2 7B throughput
# (8 x 512 bf16 + fp8, 2 x 512) and the step profile; c3 the decode bench and the FP8 deviation.
set -uo pipefail
tar xJf .devpack/devbin.tar.xz
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
END=${END_S:-545}
source scripts/prebuilt-env.sh
O=/tmp/o0; mkdir -p $O
OUT=$O/s HDPISSA_GPU_TEST_SCRATCH=/tmp/hs2 SUITES="hdpissa_llama_decode_cuda_tests hdpissa_llama_cuda_tests" timeout 150 scripts/prebuilt-suites.sh > $O/s.txt 2>&1
cat $O/s.txt; cp $O/s.txt $OUT/; echo "suites done at $(el) s"
OUT=$O/d WORK=/tmp/dbw PREBUILT=$PWD/.devbin SHAPES=llama2-7b GSM8K_SHAPES="${GSM8K_SHAPES-}" GSM8K_TIMEOUT=120 timeout 200 scripts/decode-bench.sh > $O/d.txt 2>&1
cp $O/d/decode-bench.md $OUT/ 2>/dev/null; cat $O/d/decode-bench.md; echo "decode done at $(el) s"
OUT=$O/fit34 PREBUILT=$PWD/.devbin timeout $(( END - 30 - $(el) )) scripts/fit-34b.sh
echo "fit rc $? done at $(el) s"; cp $O/fit34/fit34.md $OUT/ 2>/dev/null
if (( $(el) < 330 )); then
  OUT=$O/t8 WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=llama2-7b MICRO_BATCHES=8 OURS_CONFIGS="hdpissa-K1 hdpissa-K1+fp8 lora+fp8" \
    PEFT_METHODS=lora-bf16-compile DEADLINE_S=$(( END - 10 - $(el) )) scripts/throughput.sh > $O/t8.txt 2>&1
  cp $O/t8/throughput.md $OUT/t8.md 2>/dev/null; grep -E "rc |total" $O/t8/throughput.log; echo "t8 done at $(el) s"
fi
grep -h -E "loaded .* in|engine ready|engine: uploading" /tmp/tpw/runs/*/*.log 2>/dev/null > $OUT/startup.txt; cat $OUT/startup.txt
tar czf $OUT/c0-logs.tgz -C $O . 2>/dev/null; ls -la $OUT
