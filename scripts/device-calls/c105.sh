# call 105 (session 35; inline on the same warm machine, recorded here): 7B 8 x 512 x 2 with PEFT LoRA
# + torch.compile in the same call: HD-PiSSA K1 (second stream at high priority) and --compute fp8.
# (Run when a config without +sideprio meant the default priority; since the default flip such rows run
# at high priority: use +sidelow for the default-priority rows to repeat this A/B.)
source scripts/device-calls/common.sh; O=/tmp/o105; mkdir -p $O; END=290
throughput $O s7b8p SHAPES=llama2-7b MICRO_BATCHES=8 PEFT_METHODS_7B=lora-bf16-compile OURS_CONFIGS_7B="hdpissa-K1+sideprio hdpissa-K1+keep+fp8"
echo "done at $(el) s"
