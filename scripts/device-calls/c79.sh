# call 79 (session 28; docs/pending/next-side-lag.patch applied on main, binaries in .devpack, main's hdpissa-train as
# .devbin/base/hdpissa-train): the model's lagged join of the adapters' second stream (c75's profile:
# HD-PiSSA's "norms + elementwise bwd" 3.10 ms per micro-batch against the bare model's 1.43 at
# TinyLlama 2 x 512, 6.17 against 3.69 at 7B: the join before each norm backward waited for the
# half-layer's adapter gradients). 1) the model suite (AdapterSideStream's lagged-join case) and the
# trainer suite (the second-stream case: bit for bit against
# one stream, lagged without checkpointing; --cuda-graphs); 2) 2 x 512 x 8 at TinyLlama and 7B:
# HD-PiSSA K1 and LoRA against main's binary (and TinyLlama HD-PiSSA K1 with --cuda-graphs), PEFT +
# compile; 3) as time allows, the TinyLlama profile.
# Run as: bash scripts/device-calls/c79.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o79; mkdir -p $O
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
run_suites $O hdpissa_llama_cuda_tests:60 hdpissa_cuda_train_tests:200
grep -h -E "ERROR|FAILED" $O/suites/*.log 2>/dev/null | head -12
OUT=$O/t WORK=/tmp/tpt PREBUILT=$PWD/.devbin SHAPES="tinyllama llama2-7b" MICRO_BATCHES=2 OURS_STEPS=6 \
  OURS_CONFIGS="hdpissa-K1 lora hdpissa-K1+graphs" OURS_CONFIGS_7B="hdpissa-K1 lora" BASELINE_BIN=$PWD/.devbin/base/hdpissa-train \
  BASELINE_LABEL="main" BASELINE_CONFIGS="hdpissa-K1 lora" PEFT_METHODS="${C79_PEFT-lora-bf16-compile}" \
  DEADLINE_S=$(( END - 10 - $(el) )) scripts/throughput.sh > $O/t.txt 2>&1
cp $O/t/throughput.md $OUT/mb2.md 2>/dev/null; echo "throughput done at $(el) s"
grep -E "^\| (\*\*)?(ours|peft)" $O/t/throughput.md | head -12
run_profile $O /tmp/tpt tiny2 SHAPE=tinyllama MB=2 GA=8 STEPS=3 CONFIGS="hdpissa-K1"
tar czf $OUT/c79-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
