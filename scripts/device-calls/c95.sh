# call 95 (session 33): the decoder's bulk-copy cache attention (cache_attention_bulk: K / V tiles
# by cp.async.bulk through a ring of shared-memory stages; the fused kernel's arithmetic, the same
# bits). 1) bench_cache_attention at the 7B and TinyLlama heads: fused / two-phase / bulk tilings vs
# two read ceilings, bits compared; 2) the decoder suite (new: bulk = fused bit for bit at five head
# shapes x windows x chunks x tilings, oversized tilings refused; the CPU's fp32 tokens with bulk);
# 3) LLaMA-2-7B shape, batch 64, 256 new tokens (decode-bench's prompts): ms per decode step with
# HDPISSA_DECODE_ATTENTION=fused and bulk at two tilings, alternated, completions compared;
# 4) decode-bench's 7B row (ours with bulk) against transformers in the same call.
# Build first (here): bench_cache_attention hdpissa_llama_decode_cuda_tests hdpissa-generate, then
# scripts/prebuilt-pack.sh build/gpu-local bench_cache_attention hdpissa_llama_decode_cuda_tests hdpissa-generate
# Run as: END_S=420 bash scripts/device-calls/c95.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o95; mkdir -p $O; W=/tmp/hdb; mkdir -p $W
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
timeout 60 .devbin/bench_cache_attention --shape 7b > $OUT/c95-bench-7b.txt 2>&1; echo "bench 7b rc $? at $(el) s"
grep -v JSON $OUT/c95-bench-7b.txt
timeout 40 .devbin/bench_cache_attention --shape tiny > $OUT/c95-bench-tiny.txt 2>&1; echo "bench tiny rc $? at $(el) s"
grep -v JSON $OUT/c95-bench-tiny.txt | tail -n +4
run_cases $O decode-tests hdpissa_llama_decode_cuda_tests 150 "*"
python3 - $W/prompts-b64.jsonl <<'PY'
import json, random, sys
rng = random.Random(0)  # decode-bench.sh's prompts (BATCH 64, PROMPT_LEN 96:224, seed 0)
with open(sys.argv[1], "w") as f:
    for _ in range(64):
        n = rng.randint(96, 224)
        f.write(json.dumps({"ids": [1] + [rng.randrange(3, 32000) for _ in range(n - 1)]}) + "\n")
PY
M7=$W/llama2-7b-L32  # decode-bench.sh's model path: it reuses the model
python3 bench/e2e/make_model.py $M7 --preset llama2-7b --layers 32 --seed 0 > $O/make.log 2>&1; echo "make_model rc $? at $(el) s"
gen() {  # gen NAME ENV...: one 7B generate run, ms per decode step
  local name=$1; shift
  env "$@" timeout 60 .devbin/hdpissa-generate --device cuda --dtype bf16 --model $M7 \
    --tokenizer .devdata/llama2_tokenizer/tokenizer.model --input $W/prompts-b64.jsonl --output $W/out-$name.jsonl \
    --batch-size 64 --max-new-tokens 256 --no-stop --warmup > $O/g-$name.log 2>&1
  local line=$(grep -o "decode [0-9]* tokens in [0-9]* steps, [0-9.]* tok/s" $O/g-$name.log | tail -1)
  python3 -c "
import re,sys; m=re.search(r'decode (\d+) tokens in (\d+) steps, ([0-9.]+) tok/s', sys.argv[2])
print(f'{sys.argv[1]:>12}:', (f'{float(m.group(3)):8.0f} decode tok/s  {int(m.group(1))/float(m.group(3))/int(m.group(2))*1e3:7.3f} ms/step' if m else 'FAILED'))" "$name" "$line" | tee -a $OUT/c95-decode.txt
}
for i in 1 2; do
  (( $(el) < END - 120 )) || break
  gen fused HDPISSA_DECODE_ATTENTION=fused
  gen bulk32x4 HDPISSA_DECODE_ATTENTION=bulk HDPISSA_DECODE_BULK_TILE=32x4
  gen bulk64x2 HDPISSA_DECODE_ATTENTION=bulk HDPISSA_DECODE_BULK_TILE=64x2
  for b in bulk32x4 bulk64x2; do
    cmp -s $W/out-fused.jsonl $W/out-$b.jsonl && echo "run $i: $b completions identical to fused" | tee -a $OUT/c95-decode.txt \
      || echo "run $i: $b completions DIFFER from fused" | tee -a $OUT/c95-decode.txt
  done
done
if (( $(el) < END - 80 )); then
  HDPISSA_DECODE_ATTENTION=bulk OUT=$O/d PREBUILT=$PWD/.devbin WORK=$W SHAPES=llama2-7b BATCH=64 NEW_TOKENS=256 GSM8K_SHAPES=" " \
    OURS_TIMEOUT=60 HF_TIMEOUT=100 timeout $(( END - 5 - $(el) )) scripts/decode-bench.sh > $O/d.txt 2>&1
  echo "decode-bench rc $? at $(el) s"; cat $O/d/decode-bench.md 2>/dev/null; cp $O/d/decode-bench.md $OUT/c95-decode-bench.md 2>/dev/null
fi
echo "done at $(el) s"
