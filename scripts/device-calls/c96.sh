# call 96 (session 33): c95 found the bulk-copy kernel at 81-83 % of the read rate against the fused
# kernel's 78 % and a read-only pass over the same ranges at 92.6 %. This call: the split kernels'
# grid runs kv heads fastest, then rows — in the decoder's order, by descending position
# (HDPISSA_DECODE_ORDER, default 1) — and the bulk kernel issues its first tiles before loading q.
# 1) bench_cache_attention 7B / TinyLlama / LLaMA-3-8B heads (ordered vs slot order, chunks 256 / 512, bulk tilings);
# 2) the decoder suite; 3) 7B decode A/B: main's configuration (fused, chunk 256, slot order), the
# bench's best ordered fused chunk, the bench's best bulk; completions compared; 4) decode-bench 7B
# with the best. Build first: bench_cache_attention hdpissa_llama_decode_cuda_tests hdpissa-generate,
# pack them (scripts/prebuilt-pack.sh). Run as: END_S=430 bash scripts/device-calls/c96.sh
source scripts/device-calls/common.sh
O=/tmp/o96; mkdir -p $O; W=/tmp/hdb; mkdir -p $W
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
timeout 90 .devbin/bench_cache_attention --shape 7b > $OUT/c96-bench-7b.txt 2>&1; echo "bench 7b rc $? at $(el) s"
grep -v JSON $OUT/c96-bench-7b.txt
timeout 60 .devbin/bench_cache_attention --shape tiny > $OUT/c96-bench-tiny.txt 2>&1; echo "bench tiny rc $? at $(el) s"
grep -v JSON $OUT/c96-bench-tiny.txt | tail -n +4
timeout 60 .devbin/bench_cache_attention --shape 8b > $OUT/c96-bench-8b.txt 2>&1; echo "bench 8b rc $? at $(el) s"
grep -v JSON $OUT/c96-bench-8b.txt | tail -n +4
run_cases $O decode-tests hdpissa_llama_decode_cuda_tests 150 "*"
read FCHUNK BCHUNK BTILE < <(python3 - $OUT/c96-bench-7b.txt <<'PY'
import json, sys
rows = [json.loads(l[5:]) for l in open(sys.argv[1]) if l.startswith("JSON ")]
f = min((r for r in rows if r["kernel"] == "fused" and r["ordered"]), key=lambda r: r["us"])
b = min((r for r in rows if r["kernel"].startswith("bulk") and r["ordered"] and r["identical"]), key=lambda r: r["us"])
print(f["chunk"], b["chunk"], b["kernel"].split()[1])
PY
)
echo "best ordered fused: chunk $FCHUNK; best bulk: chunk $BCHUNK tile $BTILE" | tee $OUT/c96-decode.txt
python3 - $W/prompts-b64.jsonl <<'PY'
import json, random, sys
rng = random.Random(0)  # decode-bench.sh's prompts (BATCH 64, PROMPT_LEN 96:224, seed 0)
with open(sys.argv[1], "w") as f:
    for _ in range(64):
        n = rng.randint(96, 224)
        f.write(json.dumps({"ids": [1] + [rng.randrange(3, 32000) for _ in range(n - 1)]}) + "\n")
PY
M7=$W/llama2-7b-L32
python3 bench/e2e/make_model.py $M7 --preset llama2-7b --layers 32 --seed 0 > $O/make.log 2>&1; echo "make_model rc $? at $(el) s"
gen() {  # gen NAME ENV...: one 7B generate run, ms per decode step
  local name=$1; shift
  env "$@" timeout 60 .devbin/hdpissa-generate --device cuda --dtype bf16 --model $M7 \
    --tokenizer .devdata/llama2_tokenizer/tokenizer.model --input $W/prompts-b64.jsonl --output $W/out-$name.jsonl \
    --batch-size 64 --max-new-tokens 256 --no-stop --warmup > $O/g-$name.log 2>&1
  local line=$(grep -o "decode [0-9]* tokens in [0-9]* steps, [0-9.]* tok/s" $O/g-$name.log | tail -1)
  python3 -c "
import re,sys; m=re.search(r'decode (\d+) tokens in (\d+) steps, ([0-9.]+) tok/s', sys.argv[2])
print(f'{sys.argv[1]:>12}:', (f'{float(m.group(3)):8.0f} decode tok/s  {int(m.group(1))/float(m.group(3))/int(m.group(2))*1e3:7.3f} ms/step' if m else 'FAILED'))" "$name" "$line" | tee -a $OUT/c96-decode.txt
}
BEST=(HDPISSA_DECODE_ATTENTION=bulk HDPISSA_DECODE_CHUNK=$BCHUNK HDPISSA_DECODE_BULK_TILE=$BTILE)
for i in 1 2; do
  (( $(el) < END - 120 )) || break
  gen main HDPISSA_DECODE_ATTENTION=fused HDPISSA_DECODE_ORDER=0
  gen fused-ord HDPISSA_DECODE_ATTENTION=fused HDPISSA_DECODE_CHUNK=$FCHUNK
  gen bulk "${BEST[@]}"
  for b in fused-ord bulk; do
    cmp -s $W/out-main.jsonl $W/out-$b.jsonl && echo "run $i: $b completions identical to main's" | tee -a $OUT/c96-decode.txt \
      || echo "run $i: $b completions DIFFER from main's" | tee -a $OUT/c96-decode.txt
  done
done
if (( $(el) < END - 80 )); then
  env "${BEST[@]}" OUT=$O/d PREBUILT=$PWD/.devbin WORK=$W SHAPES=llama2-7b BATCH=64 NEW_TOKENS=256 GSM8K_SHAPES=" " \
    OURS_TIMEOUT=60 HF_TIMEOUT=100 timeout $(( END - 5 - $(el) )) scripts/decode-bench.sh > $O/d.txt 2>&1
  echo "decode-bench rc $? at $(el) s"; cat $O/d/decode-bench.md 2>/dev/null; cp $O/d/decode-bench.md $OUT/c96-decode-bench.md 2>/dev/null
fi
echo "done at $(el) s"
