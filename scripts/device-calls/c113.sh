# call 113 (session 37; a short call for the device time left): TinyLlama 2 x 512 x 8 HD-PiSSA K1
# under --cuda-graphs (43.0 % MFU in c109, issue 20 asks 45 %) with the knobs that change the
# backward's adapter work: the fused adapter-gradient kernels (+fused), the second stream off
# (+onestream), one GEMM per member (+unstacked); eager for the reference. No PEFT row.
# Run as: END_S=150 bash scripts/device-calls/c113.sh (carry .devpack, .devdata)
source scripts/device-calls/common.sh
O=/tmp/o113; mkdir -p $O
nvidia-smi --query-gpu=name --format=csv,noheader | head -1; cat .devbin/COMMIT
throughput $O tiny2k SHAPES=tinyllama MICRO_BATCHES=2 PEFT_METHODS=none \
  OURS_CONFIGS="hdpissa-K1+graphs hdpissa-K1+graphs+fused hdpissa-K1+graphs+onestream hdpissa-K1+graphs+unstacked hdpissa-K1"
tar czf $OUT/c113-logs.tgz -C $O . 2>/dev/null
echo "done at $(el) s"
