# call 36 (session 20): why the trainer's loss section is slower than the bare model's (c33: 3.70 vs
# 2.04 ms per TinyLlama 8 x 512 micro-batch with the same 3,280 target rows; 7B: 5.39 vs 4.18).
# 1) ncu, one metric: the loss's own kernels (gather_rows, cross_entropy, scatter_rows) in the bare
#    model and in the trainer, after the warm-up: if they match, the difference is the two GEMMs;
# 2) cuBLASLt's log of the loss GEMMs' algorithm choice (the 32000-wide shapes) on both sides.
# Run as: bash scripts/device-calls/c36.sh   (carry [".devpack", ".devdata"])
source scripts/device-calls/common.sh
O=/tmp/o36; mkdir -p $O
D=.devdata/throughput
[[ -f /tmp/tpw/tinyllama/config.json ]] || python3 bench/e2e/make_model.py /tmp/tpw/tinyllama --preset tinyllama --seed 0 > $O/mk.log 2>&1
BARE=(.devbin/bench_llama_cuda --shape tinyllama --batch 8 --seq 512 --prompt-fraction 0.2)
TR=(.devbin/hdpissa-train --device cuda --dtype bf16 --model /tmp/tpw/tinyllama --tokenizer $D/tokenizer.model
    --data $D/train.jsonl --method hdpissa --rank 16 --alpha 16 --targets q,k,v,o,gate,up,down --svd randomized
    --micro-batch 8 --grad-accum 2 --max-len 512 --lr 2e-5 --warmup-ratio 0 --log-every 1)
K='regex:gather_rows|cross_entropy|scatter_rows'
timeout 90 ncu --kernel-name "$K" --launch-skip 24 --launch-count 12 --metrics gpu__time_duration.sum --csv \
  "${BARE[@]}" --steps 3 --warmup 1 > $O/ncu-bare.csv 2> $O/ncu-bare.err; echo "ncu bare rc $? at $(el) s"
timeout 120 ncu --kernel-name "$K" --launch-skip 24 --launch-count 12 --metrics gpu__time_duration.sum --csv \
  "${TR[@]}" --max-steps 2 > $O/ncu-tr.csv 2> $O/ncu-tr.err; echo "ncu trainer rc $? at $(el) s"
python3 - $O/ncu-bare.csv $O/ncu-tr.csv <<'PY' | tee $OUT/loss-kernels.txt
import csv, sys, collections
for f in sys.argv[1:]:
    rows = [l for l in open(f, errors="replace") if l.startswith('"')]
    t = collections.defaultdict(list)
    for r in csv.DictReader(rows):
        if r.get("Metric Name") == "gpu__time_duration.sum":
            n = r["Kernel Name"].split("(")[0].split("<")[0].split("::")[-1]
            t[n].append(float(r["Metric Value"].replace(",", "")) / (1e3 if r.get("Metric Unit") == "nsecond" else 1.0))
    print(f, {k: (len(v), round(sum(v), 1)) for k, v in t.items()}, "(count, total us or ms as ncu reports)")
PY
for side in bare tr; do
  if [[ $side == bare ]]; then cmd=("${BARE[@]}" --steps 1 --warmup 0); else cmd=("${TR[@]}" --max-steps 1); fi
  CUBLASLT_LOG_LEVEL=4 timeout 60 "${cmd[@]}" 2>&1 | grep -E "32000" | sed -E 's/^\[[^]]*\]//' | sort | uniq -c | sort -rn | head -12 > $O/lt-$side.txt
  echo "== cuBLASLt, $side (distinct 32000-wide calls)"; cut -c1-400 $O/lt-$side.txt
done | tee $OUT/loss-lt.txt
tar czf $OUT/c36-logs.tgz -C $O . 2>/dev/null; echo "done at $(el) s"
