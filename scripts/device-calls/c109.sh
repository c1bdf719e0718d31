# call 109 (planned in session 36; not run): the A/Bs of the next/s36 branch (c108.sh's binaries):
# 1) 7B 8 x 512 x 2, HD-PiSSA K1 --compute fp8 --keep-swiglu: each FP8 copy of W quantised behind its
#    W update on the apply stream (the branch's default) vs at the target's first forward on the model's
#    stream (+f8first = HDPISSA_FP8_REFRESH_ON_APPLY=0, main's behaviour), alternated twice; merge the
#    FP8 patch if it is not slower (issue 20's FP8 1.6x: 1.48x in c105);
# 2) TinyLlama 2 x 512 x 8 --cuda-graphs with the second stream high (the default) vs +sidelow (every
#    replayed node at the launch stream's priority, as before the graph-node-priority patch): c107's
#    question; merge that patch if +graphs beats +graphs+sidelow.
# Run as: END_S=560 bash scripts/device-calls/c109.sh (carry .devpack, .devdata)
source scripts/device-calls/common.sh
O=/tmp/o109; mkdir -p $O
nvidia-smi --query-gpu=name --format=csv,noheader | head -1; cat .devbin/COMMIT
# (a config name appears once per throughput.sh run: its logs are named after it; the repeat is a
# second run in the other order)
throughput $O s7b8f-a SHAPES=llama2-7b MICRO_BATCHES=8 PEFT_METHODS_7B=none \
  OURS_CONFIGS_7B="hdpissa-K1+fp8+keep hdpissa-K1+fp8+keep+f8first"
throughput $O s7b8f-b SHAPES=llama2-7b MICRO_BATCHES=8 PEFT_METHODS_7B=none \
  OURS_CONFIGS_7B="hdpissa-K1+fp8+keep+f8first hdpissa-K1+fp8+keep"
throughput $O tiny2g SHAPES=tinyllama MICRO_BATCHES=2 PEFT_METHODS=none \
  OURS_CONFIGS="hdpissa-K1+graphs hdpissa-K1+graphs+sidelow hdpissa-K1"
tar czf $OUT/c109-logs.tgz -C $O . 2>/dev/null
echo "done at $(el) s"
