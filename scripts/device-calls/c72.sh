# call 72 (session 27; main's binaries, rebuilt here at the COMMIT in .devpack): on an H200, issue 16's
# decode rows (c53: hdpissa-generate --device cuda against transformers' generate, batch 64, 256 new
# tokens, TinyLlama and 7B; the GSM8K test at 7B); on an H100, issue 20's profile table, last
# refreshed in session 22: `--profile` sections per micro-batch, the bare model (bench_llama_cuda)
# against HD-PiSSA K1 and LoRA, at TinyLlama 2 x 512 x 8 and LLaMA-2-7B 2 x 512 x 8, then HD-PiSSA K1
# with --compute fp8 at 7B 8 x 512 x 2 (C72_PROFILE=1 forces the profiles on an H200).
# Run as: bash scripts/device-calls/c72.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o72; mkdir -p $O
GPU="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"; echo "gpu: $GPU"
if [[ "$GPU" == *H200* && -z "${C72_PROFILE:-}" ]]; then
  OUT=$O/d PREBUILT=$PWD/.devbin WORK=/tmp/hdb SHAPES="tinyllama llama2-7b" BATCH=64 NEW_TOKENS=256 \
    GSM8K_SHAPES=llama2-7b GSM8K_TIMEOUT=150 OURS_TIMEOUT=120 HF_TIMEOUT=150 \
    timeout $(( END - 10 )) scripts/decode-bench.sh > $O/d.txt 2>&1
  echo "decode-bench rc $? at $(el) s"; cat $O/d/decode-bench.md 2>/dev/null
  cp $O/d/decode-bench.md $OUT/c72-decode-bench.md 2>/dev/null
else
  run_profile $O /tmp/tpw tiny2 SHAPE=tinyllama MB=2 GA=8 STEPS=3 CONFIGS="lora hdpissa-K1"
  run_profile $O /tmp/tpw 7b2 SHAPE=llama2-7b MB=2 GA=8 STEPS=3 CONFIGS="lora hdpissa-K1"
  run_profile $O /tmp/tpw 7b8fp8 SHAPE=llama2-7b MB=8 GA=2 STEPS=4 CONFIGS="hdpissa-K1" EXTRA="--compute fp8 --keep-swiglu"
fi
tar czf $OUT/c72-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
