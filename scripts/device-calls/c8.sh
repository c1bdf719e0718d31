# call 8 (session 14's plan; not run): the new GPU cases (bf16 GEMM tuning bit for bit, tuning under
# graph capture, HDPISSA_DECODE_CHUNK), then issue 16's decode A/B at the 7B shape in one call:
# decode-bench.sh (ours + transformers generate), then ours again on the same model and prompts
# with the bf16 GEMM tuner (exact: same tokens; fastest: informational) and other split sizes
# (8192: one split, the fused kernel writes the output itself and no combine runs).
# Run as: bash scripts/device-calls/c8.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o8; mkdir -p $O
run_suites $O hdpissa_cuda_tests:90 hdpissa_llama_decode_cuda_tests:45
OUT=$O/d WORK=/tmp/dbw PREBUILT=$PWD/.devbin SHAPES=llama2-7b GSM8K_SHAPES=none HF_TIMEOUT=200 \
  timeout $(( END - 100 - $(el) )) scripts/decode-bench.sh > $O/d.txt 2>&1
cp $O/d/decode-bench.md $OUT/ 2>/dev/null; cat $O/d/decode-bench.md; echo "decode-bench done at $(el) s"
M=/tmp/dbw/llama2-7b-L32; P=/tmp/dbw/prompts-b64.jsonl; TOK=.devdata/llama2_tokenizer/tokenizer.model
i=0
for v in HDPISSA_CUDA_GEMM_TUNING_BF16=exact HDPISSA_DECODE_CHUNK=8192 HDPISSA_DECODE_CHUNK=256 HDPISSA_DECODE_CHUNK=64 \
         "HDPISSA_CUDA_GEMM_TUNING_BF16=exact HDPISSA_DECODE_CHUNK=256" HDPISSA_CUDA_GEMM_TUNING_BF16=fastest; do
  (( $(el) > END - 40 )) && { echo "variant $v: SKIPPED (deadline)"; continue; }
  i=$((i + 1))
  env $v timeout $(( END - 5 - $(el) < 90 ? END - 5 - $(el) : 90 )) .devbin/hdpissa-generate --device cuda --dtype bf16 --model $M --tokenizer $TOK --input $P \
    --output $O/v$i.jsonl --batch-size 64 --max-new-tokens 256 --no-stop --warmup --stats-json $O/v$i.json > $O/v$i.log 2>&1
  echo "variant $i ($v): rc $? at $(el) s; $(tail -1 $O/v$i.log | cut -c1-200)"
  grep "gemm tuning" $O/v$i.log | cut -c1-260 | head -8
  python3 - "$O/v$i.json" /tmp/dbw/runs/ours-llama2-7b.json /tmp/dbw/runs/hf-llama2-7b.json "$v" \
      /tmp/dbw/runs/ours-llama2-7b.jsonl "$O/v$i.jsonl" <<'PY' | tee -a $O/variants.md
import json, sys
def load(p):
    try: return json.load(open(p))
    except Exception: return None
v, base, hf = (load(p) for p in sys.argv[1:4])
same = None
try: same = open(sys.argv[5]).read() == open(sys.argv[6]).read()
except Exception: pass
if v:
    r = lambda x: f"{v['decode_tok_s'] / x['decode_tok_s']:.3f}x" if x else "-"
    print(f"| {sys.argv[4]} | {v['decode_tok_s']:,.0f} | {r(base)} | {r(hf)} | {'identical' if same else 'differ' if same is False else '-'} |")
else:
    print(f"| {sys.argv[4]} | failed | - | - | - |")
PY
done
cp $O/variants.md $OUT/ 2>/dev/null
tar czf $OUT/c8-logs.tgz -C $O . ; ls -la $OUT
