#!/usr/bin/env python3
"""Per-kernel time of the last PASSES decoder passes of an Nsight Compute CSV (docs/evaluation.md,
"Decode profile"). A pass starts at each embed_gather launch (one per forward_rows call: prefill
chunks first, then one per decode step), so the last passes are decode steps.

    ncu --clock-control none --metrics gpu__time_duration.sum,dram__bytes.sum --csv --print-units base \
        --launch-count 2500 hdpissa-generate --device cuda --dtype bf16 ... --max-new-tokens 24 --no-stop > ncu.csv
    gzip ncu.csv; scripts/ncu-decode-summary.py ncu.csv.gz [PASSES=10]

Prints, per (kernel, grid): share of the time, microseconds per pass, launches per pass, and the
DRAM bytes over the time (GB/s).
"""
import csv, gzip, sys, re, collections
rows = list(csv.reader(gzip.open(sys.argv[1], 'rt')))
# find header
hi = next(i for i, r in enumerate(rows) if r and r[0] == 'ID')
h = rows[hi]; rows = rows[hi + 1:]
ix = {k: h.index(k) for k in h}
kern = collections.OrderedDict()
for r in rows:
    if len(r) < len(h): continue
    kid = int(r[ix['ID']])
    k = kern.setdefault(kid, {'name': r[ix['Kernel Name']], 'grid': r[ix['Grid Size']], 'block': r[ix['Block Size']]})
    try: k[r[ix['Metric Name']]] = float(r[ix['Metric Value']].replace(',', ''))
    except ValueError: pass
ks = list(kern.values())
starts = [i for i, k in enumerate(ks) if 'embed' in k['name']]
print(len(ks), 'kernels,', len(starts), 'passes')
last = int(sys.argv[2]) if len(sys.argv) > 2 else 10
sel = ks[starts[-last]:] if len(starts) > last else ks
def short(n):
    n = re.sub(r'\(.*', '', n); n = re.sub(r'<.*', '', n)
    return n[:60]
agg = collections.defaultdict(lambda: [0, 0.0, 0.0])
for k in sel:
    a = agg[(short(k['name']), k['grid'])]
    a[0] += 1; a[1] += k.get('gpu__time_duration.sum', 0); a[2] += k.get('dram__bytes.sum', 0)
tot = sum(a[1] for a in agg.values())
print(f'last {last} passes: total {tot/1e6/last:.3f} ms per pass')
for (n, g), (c, t, b) in sorted(agg.items(), key=lambda x: -x[1][1]):
    print(f'{t/tot*100:5.1f}%  {t/1e3/last:8.1f} us/pass  n={c//last:3d}  {b/t if t else 0:7.1f} GB/s  {n}  grid {g}')
