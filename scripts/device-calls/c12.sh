# call 12 (session 15, ran on an H100 as one inline command of this content, END 360): the decoder
# suite (the fused attention's 256-key default), then issue 16's decode bench at both shapes with
# the new defaults (256 keys per split where the fused attention runs; bit-exact bf16 GEMM tuning
# in hdpissa-generate / hdpissa-eval) against transformers generate in the same call.
# Run as: bash scripts/device-calls/c12.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o12; mkdir -p $O
run_suites $O hdpissa_llama_decode_cuda_tests:45
OUT=$O/d WORK=/tmp/dbw PREBUILT=$PWD/.devbin SHAPES="llama2-7b tinyllama" GSM8K_SHAPES=none HF_TIMEOUT=150 \
  timeout $(( ${END_S:-360} - $(el) )) scripts/decode-bench.sh > $O/d.txt 2>&1
echo "rc $? at $(el) s"; cp $O/d/decode-bench.md $OUT/ 2>/dev/null; cat $O/d/decode-bench.md
tar czf $OUT/c12-logs.tgz -C $O . 2>/dev/null
