# call 98 (session 34): session 33's c97 (never run; its script removed, all of it is here: the bulk cache attention as the decoder's default, docs/pending
# next-bulk-default) plus programmatic dependent launches in the decoder's passes
# (HDPISSA_DECODE_PDL=1: the norm, RoPE + cache write, attention, combine, SwiGLU and argmax kernels
# launched with the programmatic-stream-serialization attribute, each waiting (griddepcontrol.wait)
# before its first read). 1) bench_cache_attention at 7B heads; 2) the decoder suite (with the new
# PDL case) and the trainer suite's engine-generation case; 3) 7B A/B, alternated: session 32's
# configuration (fused, chunk 256, unordered), the new default, the default + PDL; the PDL
# completions compared with the default's byte for byte; and the default with any timed cuBLASLt
# algorithm for the bf16 GEMMs (HDPISSA_CUDA_GEMM_TUNING_BF16=fastest, not only cuBLAS's bits); 4) decode-bench at both shapes (with PDL
# when it won in 3), GSM8K at 7B if 300 s are left.
# Build first (branch next/pdl): bench_cache_attention hdpissa_llama_decode_cuda_tests
# hdpissa_cuda_train_tests hdpissa-generate hdpissa-eval; pack them. Run as: END_S=540 bash scripts/device-calls/c98.sh
source scripts/device-calls/common.sh
O=/tmp/o98; mkdir -p $O; W=/tmp/hdb; mkdir -p $W
nvidia-smi --query-gpu=name --format=csv,noheader | head -1; cat .devbin/COMMIT
timeout 60 .devbin/bench_cache_attention --shape 7b > $OUT/c98-bench-7b.txt 2>&1; echo "bench 7b rc $? at $(el) s"
grep -v JSON $OUT/c98-bench-7b.txt | tail -n +4
run_cases $O decode-tests hdpissa_llama_decode_cuda_tests 170 "*"
run_cases $O engine-gen hdpissa_cuda_train_tests 120 "*batched GPU generation*"
decode_prompts $W/prompts-b64.jsonl
M7=$W/llama2-7b-L32
python3 bench/e2e/make_model.py $M7 --preset llama2-7b --layers 32 --seed 0 > $O/make.log 2>&1; echo "make_model rc $? at $(el) s"
for i in 1 2; do
  (( i == 1 || $(el) < END - 220 )) || break
  decode_gen $W $M7 $W/prompts-b64.jsonl s32 HDPISSA_DECODE_ATTENTION=fused HDPISSA_DECODE_CHUNK=256 HDPISSA_DECODE_ORDER=0
  decode_gen $W $M7 $W/prompts-b64.jsonl default
  decode_gen $W $M7 $W/prompts-b64.jsonl pdl HDPISSA_DECODE_PDL=1
  decode_gen $W $M7 $W/prompts-b64.jsonl fastest HDPISSA_CUDA_GEMM_TUNING_BF16=fastest
  { cmp -s $W/out-default.jsonl $W/out-pdl.jsonl && echo "run $i: pdl completions IDENTICAL to the default's" \
    || echo "run $i: pdl completions DIFFER from the default's"; } | tee -a $OUT/decode-ab.txt
done
PDL=0
python3 - "$OUT/decode-ab.txt" <<'PY' && PDL=1
import re, sys, statistics
t = {}
for l in open(sys.argv[1]):
    m = re.match(r'\s*(\w+):\s+\d+ decode tok/s\s+([0-9.]+) ms/step', l)
    if m: t.setdefault(m.group(1), []).append(float(m.group(2)))
d, p = min(t.get('default', [9e9])), min(t.get('pdl', [9e9]))
print(f'best default {d:.3f} ms/step, pdl {p:.3f}: decode-bench runs with HDPISSA_DECODE_PDL={int(p < d)}')
sys.exit(0 if p < d else 1)
PY
GS=" "; (( $(el) < END - 300 )) && GS=llama2-7b
SH="llama2-7b"; (( $(el) < END - 150 )) && SH="tinyllama llama2-7b"
HDPISSA_DECODE_PDL=$PDL OUT=$O/d PREBUILT=$PWD/.devbin WORK=$W SHAPES="$SH" BATCH=64 NEW_TOKENS=256 GSM8K_SHAPES="$GS" \
  GSM8K_TIMEOUT=200 OURS_TIMEOUT=60 HF_TIMEOUT=100 timeout $(( END - 5 - $(el) )) scripts/decode-bench.sh > $O/d.txt 2>&1
echo "decode-bench (HDPISSA_DECODE_PDL=$PDL) rc $? at $(el) s"; cat $O/d/decode-bench.md 2>/dev/null
cp $O/d/decode-bench.md $OUT/c98-decode-bench.md 2>/dev/null
tail -3 $O/d.txt
echo "done at $(el) s"
