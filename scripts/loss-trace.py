#!/usr/bin/env python3
"""loss-trace.py TRACE.csv — the loss section of every micro-batch from an nsys cuda_gpu_trace csv
(`nsys stats --report cuda_gpu_trace --format csv`): from the first gather_rows launch to the last
scatter_rows launch before the next backward kernel, the kernels in between (duration, the gap
before each) and the section's wall time against the sum of its kernels (gaps = GPU idle time).
Used for the session-20 question of why the trainer's loss section takes longer than the bare model's."""
import csv, sys, collections
rows = []
with open(sys.argv[1], newline="") as f:
    lines = [l for l in f if l.strip() and not l.startswith("NOTICE") and not l.startswith("Processing")]
for r in csv.DictReader(lines):
    name = r.get("Name") or r.get("Kernel Name") or ""
    try:
        start, dur = int(r["Start (ns)"]), int(r["Duration (ns)"])
    except (KeyError, ValueError):
        continue
    rows.append((start, dur, name))
rows.sort()
sections, i = [], 0
while i < len(rows):
    if "gather_rows" in rows[i][2]:
        j = i
        last = i
        while j < len(rows) and ("rmsnorm_bwd" not in rows[j][2]):
            if "scatter_rows" in rows[j][2]:
                last = j
            j += 1
        sections.append(rows[i:last + 1])
        i = last + 1
    else:
        i += 1
print(f"{len(sections)} loss sections")
for k, sec in enumerate(sections[-4:]):
    wall = sec[-1][0] + sec[-1][1] - sec[0][0]
    busy = sum(d for _, d, _ in sec)
    print(f"section {len(sections) - 4 + k}: wall {wall/1e3:.1f} us, kernels {busy/1e3:.1f} us, idle {(wall-busy)/1e3:.1f} us, {len(sec)} kernels")
    prev_end = sec[0][0]
    for s, d, n in sec:
        print(f"   gap {(s - prev_end)/1e3:7.1f}  dur {d/1e3:8.1f} us  {n[:110]}")
        prev_end = s + d
