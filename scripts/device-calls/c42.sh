# call 42 (session 21, next/s21 at the commit in .devbin/COMMIT; c41's binaries had a stale engine
# object — built from engine.hpp before the profile_host() virtual was added, a vtable mismatch that
# failed the trainer's FP8 test and crashed --profile's report — rebuilt here from touched headers):
# 1) the whole trainer suite and the CUDA library suite (new: AdapterLinear's shared-input forward
#    and backward on bf16 against float64; MutedLinear::backward_shared with accumulate_gA = false);
# 2) section profiles with the host's time between the marks: TinyLlama 8 x 512 (bare, HD-PiSSA K1,
#    LoRA), TinyLlama 2 x 512 (bare, HD-PiSSA K1), LLaMA-2-7B 8 x 512 --compute fp8 (HD-PiSSA K1);
# 3) TinyLlama 8 x 512 again against PEFT + compile (c40's PEFT, 46k tok/s, was 25 % under session
#    20's 61k: is the peer's spread that large?).
# Run as: bash scripts/device-calls/c42.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o42; mkdir -p $O
run_suites $O hdpissa_cuda_train_tests:130 hdpissa_cuda_tests:90
grep -h -E "ERROR|FAILED" $O/suites/*.log | head -20
prof() {  # NAME SHAPE MB GA CONFIGS [EXTRA] [BARE_ARGS]
  OUT=$O/$1 WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPE=$2 MB=$3 GA=$4 STEPS=4 CONFIGS="$5" EXTRA="${6:-}" \
    BARE_ARGS="${7:---prompt-fraction 0.2}" timeout $(( END - 5 - $(el) )) scripts/profile-step.sh > $O/$1.txt 2>&1
  echo "$1 profile rc $? at $(el) s"
  { cat $O/$1/profile.md; for f in $O/$1/*.log; do echo "$(basename $f .log): $(grep -h "host time" $f)"; done; } > $OUT/profile-$1.md 2>/dev/null
  cat $OUT/profile-$1.md
}
prof tiny8 tinyllama 8 2 "hdpissa-K1 lora"
(( END - $(el) > 60 )) && prof tiny2 tinyllama 2 8 "hdpissa-K1"
(( END - $(el) > 80 )) && prof 7bfp8 llama2-7b 8 2 "hdpissa-K1" "--compute fp8" "--steps 2 --warmup 1"
if (( END - $(el) > 170 )); then
  OUT=$O/t8 WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=tinyllama MICRO_BATCHES=8 OURS_STEPS=8 \
    OURS_CONFIGS="hdpissa-K1 lora" PEFT_METHODS=lora-bf16-compile \
    DEADLINE_S=$(( END - 10 - $(el) )) scripts/throughput.sh > $O/t8.txt 2>&1
  cp $O/t8/throughput.md $OUT/tiny-mb8.md 2>/dev/null; echo "tiny mb8 done at $(el) s"
  grep -E "^\| (\*\*)?(ours|peft)" $O/t8/throughput.md | head -4
fi
tar czf $OUT/c42-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
