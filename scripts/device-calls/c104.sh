# call 104 (session 35; inline on the same warm machine, recorded here): 7B 8 x 512 x 2, bf16 and
# --compute fp8 --keep-swiglu, with and without the second stream at high priority (no PEFT row).
# (Run when a config without +sideprio meant the default priority; since the default flip such rows run
# at high priority: use +sidelow for the default-priority rows to repeat this A/B.)
source scripts/device-calls/common.sh; O=/tmp/o104; mkdir -p $O; END=300
throughput $O s7b8 SHAPES=llama2-7b MICRO_BATCHES=8 PEFT_METHODS_7B=none OURS_CONFIGS_7B="hdpissa-K1+sideprio hdpissa-K1 hdpissa-K1+keep+fp8+sideprio hdpissa-K1+keep+fp8"
echo "done at $(el) s"
