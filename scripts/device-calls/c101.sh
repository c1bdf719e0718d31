# call 101 (session 35): where issue 20's 7B 8 x 512 step goes now, bf16 and --compute fp8, on the
# same machine right after c100 (whose decode-bench left the 7B model in /tmp/hdb/llama2-7b-L32).
# 1) scripts/profile-step.sh at 7B 8 x 512 x 2 (bare model vs HD-PiSSA K1; the section table) in
# bf16 and with --compute fp8 --keep-swiglu; 2) throughput at 7B 8 x 512 x 2: HD-PiSSA K1 bf16 and
# fp8 (+keep) against PEFT LoRA + torch.compile in the same call.
# Build first: hdpissa-train bench_llama_cuda (with c100's binaries); .devdata/throughput from
# `scripts/throughput.sh prepare`. Run as: END_S=560 bash scripts/device-calls/c101.sh
source scripts/device-calls/common.sh
O=/tmp/o101; mkdir -p $O; W=/tmp/hdb; mkdir -p $W
nvidia-smi --query-gpu=name --format=csv,noheader | head -1; cat .devbin/COMMIT
run_profile $O $W 7b8 SHAPE=llama2-7b MB=8 GA=2 STEPS=3 CONFIGS=hdpissa-K1
run_profile $O $W 7b8fp8 SHAPE=llama2-7b MB=8 GA=2 STEPS=3 CONFIGS=hdpissa-K1 EXTRA="--compute fp8 --keep-swiglu"
# the fp8 run's bare model is the bf16 bench again: keep only the trainer column of that table
throughput $O t7b8 SHAPES=llama2-7b MICRO_BATCHES=8 MODEL_DIR_7B=$W/llama2-7b-L32 OURS_CONFIGS_7B="hdpissa-K1 hdpissa-K1+keep+fp8" \
  PEFT_METHODS_7B=lora-bf16-compile
tar czf $OUT/c101-logs.tgz -C $O . 2>/dev/null
echo "done at $(el) s"
