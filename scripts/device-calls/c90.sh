# call 90 (session 32, main + the apply_fused_w branch merge in dwu_kernels.hpp: one pack + launch
# after picking the stream and Rt scratch). 1) the library's bf16-W DWU case (deferred joins on 1
# and 2 apply streams, every side launch behind a spin: W after each step equal to the CPU's bit for
# bit) and the trainer's overlap case (11 configurations bit for bit against the joined step);
# 2) issue 20's profile table on the current code (the first since the DWU overlap): bare model vs
# HD-PiSSA K1 --profile at TinyLlama 2 x 512 x 8 and LLaMA-2-7B 2 x 512 x 8.
# Run as: END_S=540 bash scripts/device-calls/c90.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o90; mkdir -p $O
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
run_cases $O lib-tests hdpissa_cuda_tests 120 "*DWU with a bf16 W storage*"
run_cases $O train-tests hdpissa_cuda_train_tests 150 "*HDPISSA_DWU_OVERLAP*"
run_profile $O /tmp/tpt tiny2 SHAPE=tinyllama MB=2 GA=8 STEPS=3 CONFIGS="hdpissa-K1"
run_profile $O /tmp/tpt 7b2 SHAPE=llama2-7b MB=2 GA=8 STEPS=3 CONFIGS="hdpissa-K1"
echo "done at $(el) s"
