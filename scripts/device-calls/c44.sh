# call 44 (written in session 21 for the next session, on branch next/loss-shapes; build and pack there
# first: hdpissa-train hdpissa_cuda_train_tests hdpissa_llama_cuda_tests bench_llama_cuda): the loss
# GEMMs over a bounded set of shapes. Session 21 (c42, c43a) found the trainer's host held 0.6-1 ms
# per loss GEMM call (bare model ~0.01), with the GPU idle behind it: the hypothesis is that the last
# loss chunk's target count changes with every batch (the bare model's does not), so each micro-batch
# meets new GEMM shapes (a cuBLAS heuristics query, a kernel's first use). The branch rounds the
# chunk's GEMM rows up to a multiple of 128 (HDPISSA_LOSS_ROW_ALIGN; 1 = the old exact count).
# 1) the model suite (GPU loss and gradients against the CPU model) and the trainer suite;
# 2) TinyLlama 8 x 512 profiles, align 1 and 128, and align 1 with CUDA_MODULE_LOADING=EAGER (is the
#    host cost a kernel's first use, i.e. lazy module loading?): the loss parts' GPU and host times;
# 3) TinyLlama 8 x 512: HD-PiSSA K1 and LoRA with align 128 (ours) and 1 (the "baseline": the same
#    binary through a wrapper) against PEFT + compile. (7B 8 x 512 and TinyLlama 2 x 512: c45.)
# The profiles' bare-model column is bench_llama_cuda at its own (fixed) target count: the variable
# reaches the trainer only.
# Run as: bash scripts/device-calls/c44.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o44; mkdir -p $O
run_suites $O hdpissa_llama_cuda_tests:120 hdpissa_cuda_train_tests:130
grep -h -E "ERROR|FAILED" $O/suites/*.log | head -20
for a in 1 128 1e; do  # 1e: the exact count with CUDA_MODULE_LOADING=EAGER (is it the first use of a kernel?)
  ml=LAZY; [[ $a == 1e ]] && ml=EAGER
  t=$(( END - 5 - $(el) )); (( t > 90 )) && t=90; (( t > 20 )) || break
  CUDA_MODULE_LOADING=$ml HDPISSA_LOSS_ROW_ALIGN=${a%e} OUT=$O/p$a WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPE=tinyllama MB=8 GA=2 STEPS=4 \
    CONFIGS="hdpissa-K1" BARE_ARGS="--prompt-fraction 0.2" timeout $t scripts/profile-step.sh > $O/p$a.txt 2>&1
  echo "align $a profile rc $? at $(el) s"
  { echo "== HDPISSA_LOSS_ROW_ALIGN=${a%e} CUDA_MODULE_LOADING=$ml"; cat $O/p$a/profile.md; for f in $O/p$a/*.log; do echo "$(basename $f .log): $(grep -h "host time" $f)"; done; } > $OUT/profile-align$a.md 2>/dev/null
  cat $OUT/profile-align$a.md
done
printf '#!/bin/bash\nHDPISSA_LOSS_ROW_ALIGN=1 exec "%s" "$@"\n' "$PWD/.devbin/hdpissa-train" > $O/train-align1; chmod +x $O/train-align1
for sm in ${C44_SHAPES:-tinyllama:8}; do
  shape=${sm%%:*}; mb=${sm##*:}
  (( END - $(el) > 150 )) || break
  OUT=$O/t-$shape-$mb WORK=/tmp/tpw PREBUILT=$PWD/.devbin SHAPES=$shape MICRO_BATCHES=$mb OURS_STEPS=8 \
    OURS_CONFIGS="hdpissa-K1 lora" BASELINE_BIN=$O/train-align1 BASELINE_LABEL=align1 BASELINE_CONFIGS="hdpissa-K1 lora" \
    PEFT_METHODS=lora-bf16-compile DEADLINE_S=$(( END - 10 - $(el) )) scripts/throughput.sh > $O/t-$shape-$mb.txt 2>&1
  cp $O/t-$shape-$mb/throughput.md $OUT/$shape-mb$mb.md 2>/dev/null; echo "$shape mb$mb done at $(el) s"
  grep -E "^\| (\*\*)?(ours|peft)" $O/t-$shape-$mb/throughput.md | head -6
done
tar czf $OUT/c44-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
