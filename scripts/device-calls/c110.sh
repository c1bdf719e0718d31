# call 110 (session 37): issue 16's 7B decode row on an H200 (blocked in session 36 for want of one),
# with a pack of hdpissa-generate and hdpissa-eval built from main (scripts/prebuilt-pack.sh; not run
# in session 37: its one H200 start was refused). decode-bench: batch 64, prompts 96-224, 256 new tokens, LLaMA-2-7B shape (random init),
# ours vs transformers' generate (static cache, bf16) in one call; then ours twice more (spread).
# On any other card it stops: the 2x is asked of an H200.
# Run as: END_S=560 bash scripts/device-calls/c110.sh (carry .devpack, .devdata)
source scripts/device-calls/common.sh
O=/tmp/o110; mkdir -p $O; W=/tmp/hdb; mkdir -p $W
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1); echo "$GPU"; cat .devbin/COMMIT
[[ "$GPU" == *H200* ]] || { echo "not an H200: stop"; exit 0; }
OUT=$O/d PREBUILT=$PWD/.devbin WORK=$W SHAPES="llama2-7b" BATCH=64 NEW_TOKENS=256 GSM8K_SHAPES=" " \
  OURS_TIMEOUT=90 HF_TIMEOUT=150 timeout 400 scripts/decode-bench.sh > $O/d.txt 2>&1
echo "decode-bench rc $? at $(el) s"; cat $O/d/decode-bench.md 2>/dev/null
cp $O/d/decode-bench.md $OUT/c110-decode-bench.md 2>/dev/null; cp $O/d/decode-bench.json $OUT/c110-decode-bench.json 2>/dev/null
decode_prompts $W/prompts-b64.jsonl
for n in r1 r2; do (( $(el) < END - 60 )) || break; decode_gen $W $W/llama2-7b-L32 $W/prompts-b64.jsonl "7b-$n"; done
tail -5 $O/d.txt; tar czf $OUT/c110-logs.tgz -C $O . 2>/dev/null
echo "done at $(el) s"
