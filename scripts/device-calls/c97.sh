# call 97 (session 33): the bulk-copy cache attention as the decoder's default (Auto: sm_90, groups
# <= 4; 16-key tiles x 2 stages; 512 keys per split where a step has >= 2048 (row, kv head) pairs,
# else 256; rows by descending position). 1) bench_cache_attention 7B / 8B heads (adds the kernel
# compiled for 8 blocks per SM); 2) the decoder suite and the trainer suite's engine-generation case;
# 3) 7B A/B: the default against session 32's configuration (HDPISSA_DECODE_ATTENTION=fused,
# HDPISSA_DECODE_CHUNK=256, HDPISSA_DECODE_ORDER=0), alternated; 4) decode-bench.sh at both shapes
# against transformers, with the GSM8K test at 7B if time is left.
# (Trimmed after refused starts: one A/B pair twice, GSM8K only with 300 s left.)
# Build first: bench_cache_attention hdpissa_llama_decode_cuda_tests hdpissa_cuda_train_tests
# hdpissa-generate hdpissa-eval; pack them. Run as: END_S=540 bash scripts/device-calls/c97.sh
source scripts/device-calls/common.sh
O=/tmp/o97; mkdir -p $O; W=/tmp/hdb; mkdir -p $W
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
for sh in 7b 8b; do
  timeout 60 .devbin/bench_cache_attention --shape $sh > $OUT/c97-bench-$sh.txt 2>&1; echo "bench $sh rc $? at $(el) s"
  grep -v JSON $OUT/c97-bench-$sh.txt | tail -n +4
done
run_cases $O decode-tests hdpissa_llama_decode_cuda_tests 150 "*"
run_cases $O engine-gen hdpissa_cuda_train_tests 120 "*batched GPU generation*"
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
print(f'{sys.argv[1]:>12}:', (f'{float(m.group(3)):8.0f} decode tok/s  {int(m.group(1))/float(m.group(3))/int(m.group(2))*1e3:7.3f} ms/step' if m else 'FAILED'))" "$name" "$line" | tee -a $OUT/c97-decode.txt
}
for i in 1 2; do
  (( i == 1 || $(el) < END - 160 )) || break
  gen s32 HDPISSA_DECODE_ATTENTION=fused HDPISSA_DECODE_CHUNK=256 HDPISSA_DECODE_ORDER=0
  gen default
done
GS=" "; (( $(el) < END - 300 )) && GS=llama2-7b
SH="llama2-7b"; (( $(el) < END - 150 )) && SH="tinyllama llama2-7b"
OUT=$O/d PREBUILT=$PWD/.devbin WORK=$W SHAPES="$SH" BATCH=64 NEW_TOKENS=256 GSM8K_SHAPES="$GS" GSM8K_TIMEOUT=200 \
  OURS_TIMEOUT=60 HF_TIMEOUT=100 timeout $(( END - 5 - $(el) )) scripts/decode-bench.sh > $O/d.txt 2>&1
echo "decode-bench rc $? at $(el) s"; cat $O/d/decode-bench.md 2>/dev/null; cp $O/d/decode-bench.md $OUT/c97-decode-bench.md 2>/dev/null
tail -3 $O/d.txt
echo "done at $(el) s"
