# call 6 (session 14): issue 16 — a fresh decode profile and the decode ratio at both shapes.
# 1. ncu over hdpissa-generate at the LLaMA-2-7B shape cut to 4 layers (per-layer kernels are the
#    32-layer model's), batch 64, prompts of 256-320 tokens, 24 new tokens; the last 20 decode steps
#    summarised by scripts/ncu-decode-summary.py (session 10's profile, docs/evaluation.md).
# 2. scripts/decode-bench.sh at TinyLlama and 7B (batch 64, 256 new tokens) vs transformers generate.
# Run as: bash scripts/device-calls/c6.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o6; mkdir -p $O
TOK=.devdata/llama2_tokenizer/tokenizer.model
python3 bench/e2e/make_model.py /tmp/l4 --preset llama2-7b --layers 4 --seed 0 > $O/make-l4.log 2>&1
python3 - /tmp/p256.jsonl <<'PY'
import json, random, sys
rng = random.Random(0)
with open(sys.argv[1], "w") as f:
    for _ in range(64):
        n = rng.randint(256, 320)
        f.write(json.dumps({"ids": [1] + [rng.randrange(3, 32000) for _ in range(n - 1)]}) + "\n")
PY
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
timeout 200 $NCU --clock-control none --metrics gpu__time_duration.sum,dram__bytes.sum --csv --print-units base \
  --launch-count 2500 .devbin/hdpissa-generate --device cuda --dtype bf16 --model /tmp/l4 --tokenizer $TOK \
  --input /tmp/p256.jsonl --output /tmp/g4.jsonl --batch-size 64 --max-new-tokens 24 --no-stop > $O/ncu.csv 2> $O/ncu.err
echo "ncu rc $? at $(el) s"; tail -3 $O/ncu.err
gzip -f $O/ncu.csv; python3 scripts/ncu-decode-summary.py $O/ncu.csv.gz 20 > $O/ncu-summary.txt 2>&1; cat $O/ncu-summary.txt
cp $O/ncu.csv.gz $O/ncu-summary.txt $OUT/
OUT=$O/d WORK=/tmp/dbw PREBUILT=$PWD/.devbin SHAPES="tinyllama llama2-7b" GSM8K_SHAPES=none HF_TIMEOUT=200 \
  timeout $(( END - 10 - $(el) )) scripts/decode-bench.sh > $O/d.txt 2>&1
cp $O/d/decode-bench.md $OUT/ 2>/dev/null; cat $O/d/decode-bench.md; echo "decode done at $(el) s"
tar czf $OUT/c6-logs.tgz -C $O --exclude ncu.csv.gz . ; ls -la $OUT
