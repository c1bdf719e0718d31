# call 103 (session 35; run inline on c102's warm machine, recorded here): the stream-priority A/B at
# LLaMA-2-7B 2 x 512 x 8 with PEFT + compile in the same call, then TinyLlama 2 x 512 x 8 again
# (eager and --cuda-graphs, each with and without the second stream at high priority).
# (Run when a config without +sideprio meant the default priority; since the default flip such rows run
# at high priority: use +sidelow for the default-priority rows to repeat this A/B.)
source scripts/device-calls/common.sh; O=/tmp/o103; mkdir -p $O; END=480
throughput $O s7b2 SHAPES=llama2-7b MICRO_BATCHES=2 PEFT_METHODS_7B=lora-bf16-compile OURS_CONFIGS_7B="hdpissa-K1+sideprio hdpissa-K1 lora+sideprio"
throughput $O tiny2b SHAPES=tinyllama MICRO_BATCHES=2 PEFT_METHODS=lora-bf16 OURS_CONFIGS="hdpissa-K1+sideprio hdpissa-K1 hdpissa-K1+sideprio+graphs hdpissa-K1+graphs"
echo "done at $(el) s"
