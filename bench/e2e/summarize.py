#!/usr/bin/env python3
"""Collects the throughput benchmark's records into JSON, CSV and markdown tables.

One table per (model shape, micro-batch); rows = every configuration of our trainer, of the
baseline build of our trainer ("ours@baseline", the same configurations run by a second
hdpissa-train binary, e.g. the previous commit) and of the PEFT side; columns tokens/s, MFU, peak
memory, the ratio to the best PEFT row of the same table and, for ours, the ratio to ours@baseline.

Layout read with --runs DIR (what scripts/throughput.sh writes):
  DIR/device.jsonl                  {"config": "bf16-peak", "peak_tflops": ...} (peft_throughput.py --peak-only)
  DIR/meta.json                     optional {"baseline_label": ..., "notes": [...]}
  DIR/<shape>/config.json           the model's config.json (N is computed from it)
  DIR/<shape>/shape.json            optional {"preset", "layers", "preset_layers"} (make_model.py)
  DIR/<shape>/mb<M>[-ga<G>]/run.json optional {"micro_batch": M, "grad_accum": G, "seq_len": 512}
  DIR/<shape>/mb<M>/peft.jsonl      peft_throughput.py records (one per method)
  DIR/<shape>/mb<M>/ours-<cfg>.jsonl, base-<cfg>.jsonl   hdpissa-train --metrics (new / baseline binary)
  DIR/<shape>/mb<M>/<name>.status.json   the driver's {"rc", "wall_s", "timeout_s", "timed_out", "skipped",
                                    "last_line"} per run (ours-<cfg>, base-<cfg>, peft-<method>), so that a
                                    run that left no record still shows up, with why.
Legacy (one table, the old layout): --peft peft.jsonl --ours-dir DIR --config config.json.

<cfg> is <method> or <method>-K<groups> (hdpissa-K8: 8 groups on the one GPU, tokens/s counts all
groups' tokens; hdpissa-K1 = --groups-per-process 1), optionally followed by _<attention> (flash
or gemm).

Our steady state: the trainer writes one {"type": "step", "tokens", "step_s", "tokens_per_s"} record
per optimizer step; the first --skip steps (warm-up: cuBLAS heuristics, allocator growth) are
dropped and tokens/s = sum(tokens) / sum(step_s) over the rest. Our peak memory: the largest
"peak_device_bytes" in the file (the summary record's, device-wide: cudaMemGetInfo total - free).
PEFT: tokens/s over its timed steps (compile warm-up excluded; compile time reported apart), peak
memory = its peak_device_bytes (device-wide, sampled after every step: comparable to ours) and
torch's max_memory_allocated / max_memory_reserved.

MFU: 4N FLOPs per token for adapter methods (forward 2N + input gradients 2N; hdpissa: muted
adapters), 6N for full fine-tuning, N = the parameters of the model's matrix multiplies (q, k, v,
o, gate, up, down of every layer + lm_head) computed from config.json; attention scores/softmax
not counted. The bf16 peak is the one measured in the same run (8192^3 torch.matmul) when there is
one, else --peak-tflops (default 989.4: H200 dense bf16, nominal), and the header says which.

"Best PEFT" = the PEFT row with the most tokens/s in the table among the adapter methods (lora /
pissa, any precision or compilation); --best-of all lets PEFT full fine-tuning compete too.

usage: summarize.py --runs DIR --out-prefix PREFIX [--skip 1] [--note TEXT]
writes PREFIX.json, PREFIX.csv, PREFIX.md and prints the markdown.
"""
import argparse
import csv
import glob
import json
import os
import re
import statistics

NOMINAL_PEAK = 989.4  # TFLOP/s, H200 (= H100 SXM) dense bf16
OURS_ORDER = ["lora", "pissa", "hdpissa-K1", "hdpissa", "hdpissa-K8", "full"]


def n_linear_from_config(path):
    c = json.load(open(path))
    d, h, L, V = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    nh = c["num_attention_heads"]
    nkv = c.get("num_key_value_heads") or nh
    hd = c.get("head_dim") or d // nh
    per_layer = d * nh * hd * 2 + 2 * d * nkv * hd + 3 * d * h  # q, o; k, v; gate, up, down
    return L * per_layer + V * d  # + lm_head


def read_jsonl(path):
    out = []
    with open(path) as f:
        for i, line in enumerate(f):
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except ValueError as e:  # a run killed mid-write leaves a partial last line
                    print(f"summarize.py: {path}:{i + 1}: skipped a line that is not JSON ({e})")
    return out


def read_json(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def status_text(st):
    """Why a run has no numbers (or a remark on one that has)."""
    if not st:
        return ""
    if st.get("skipped"):
        return f"skipped: {st['skipped']}"
    if st.get("timed_out"):
        return f"timed out after {st.get('timeout_s', '?')} s"
    if st.get("rc") not in (0, None):
        last = (st.get("last_line") or "").strip()
        return f"rc {st['rc']}" + (f": {last}" if last else "")
    return ""


def ours_record(path, skip, side):
    """side 'ours' (ours-<cfg>.jsonl) or 'ours@baseline' (base-<cfg>.jsonl)."""
    stem = os.path.basename(path)[:-len(".jsonl")]
    cfg = stem.split("-", 1)[1]
    base, _, attention = cfg.partition("_")  # optional _flash / _gemm: the GPU model's attention
    method, _, k = base.partition("-K")
    recs = read_jsonl(path) if os.path.exists(path) else []
    steps = [r for r in recs if r.get("type") == "step" and "step_s" in r and "tokens" in r]
    rec = {"side": side, "method": method, "base_method": method, "groups": int(k) if k.isdigit() else 1,
           "ours_config": cfg, "config": f"{side}-{cfg}", "source": os.path.basename(path)}
    if attention:
        rec["attention"] = attention
    peaks = [r["peak_device_bytes"] for r in recs if isinstance(r.get("peak_device_bytes"), (int, float))]
    rec["peak_device_bytes"] = max(peaks) if peaks else None
    parts = [r["peak_memory_parts"] for r in recs if r.get("type") == "summary" and isinstance(r.get("peak_memory_parts"), dict)]
    if parts:
        rec["memory_parts"] = parts[-1]
    timed = steps[skip:]
    if not timed:
        rec["error"] = (f"{len(steps)} step records, none left after skipping {skip} warm-up steps" if recs
                        else "no metrics")
        return rec
    secs = sum(r["step_s"] for r in timed)
    rec["tokens_per_s"] = sum(r["tokens"] for r in timed) / secs
    rec["step_s_median"] = statistics.median(r["step_s"] for r in timed)
    rec["tokens_per_step"] = statistics.median(r["tokens"] for r in timed)
    rec["timed_steps"] = len(timed)
    rec["warmup_steps"] = min(skip, len(steps))
    rec["first_step_s"] = steps[0]["step_s"]
    rec["loss_first"] = steps[0].get("loss")
    rec["loss_last"] = steps[-1].get("loss")
    return rec


def ours_sort_key(r):
    cfg = r.get("ours_config", "")
    base = cfg.split("+")[0].split("@")[0].split("_")[0]
    i = OURS_ORDER.index(base) if base in OURS_ORDER else len(OURS_ORDER)
    return (i, cfg, r["side"] != "ours")


def peft_base(r):
    return r.get("base_method") or str(r.get("method", "")).split("-")[0]


def collect_group(d, skip):
    """Rows of one (shape, micro-batch) directory: ours, ours@baseline, PEFT (with status-only failures)."""
    ours = []
    for side, prefix in (("ours", "ours"), ("ours@baseline", "base")):
        names = {os.path.basename(p)[:-len(".jsonl")] for p in glob.glob(os.path.join(d, prefix + "-*.jsonl"))}
        names |= {os.path.basename(p)[:-len(".status.json")] for p in glob.glob(os.path.join(d, prefix + "-*.status.json"))}
        for stem in sorted(names):
            r = ours_record(os.path.join(d, stem + ".jsonl"), skip, side)
            st = read_json(os.path.join(d, stem + ".status.json"))
            if st:
                r["run_status"] = st
                r["wall_s"] = st.get("wall_s")
                why = status_text(st)
                if why:
                    if r.get("error"):
                        r["error"] = why if r["error"] == "no metrics" else f"{why}; {r['error']}"
                    else:
                        r["remark"] = why
            ours.append(r)
    ours.sort(key=ours_sort_key)
    peft = [r for r in (read_jsonl(os.path.join(d, "peft.jsonl")) if os.path.exists(os.path.join(d, "peft.jsonl"))
                        else []) if r.get("side") == "peft"]
    seen = {r.get("method") for r in peft}
    for p in sorted(glob.glob(os.path.join(d, "peft-*.status.json"))):
        m = os.path.basename(p)[len("peft-"):-len(".status.json")]
        st = read_json(p) or {}
        mine = [r for r in peft if r.get("method") == m]
        for r in mine:
            r["wall_s"] = st.get("wall_s")
            r["run_status"] = st
        if m not in seen:
            peft.append({"side": "peft", "method": m, "config": f"peft-{m}", "run_status": st,
                         "wall_s": st.get("wall_s"), "error": status_text(st) or "no record"})
    for r in peft:
        r.setdefault("groups", 1)
        r.setdefault("base_method", peft_base(r))
    # run order (the driver's status files say when each run ended); records without one keep theirs
    peft = [r for _, r in sorted(enumerate(peft), key=lambda ir: ((ir[1].get("run_status") or {}).get("ended") or 0, ir[0]))]
    return ours + peft


def finish_group(g, peak, best_of):
    """MFU, best PEFT, ratios."""
    n = g["n_linear"]
    for r in g["rows"]:
        t = r.get("tokens_per_s")
        if t and n:
            r["flops_per_token"] = (6 if r.get("base_method") == "full" else 4) * n
            r["mfu"] = t * r["flops_per_token"] / (peak * 1e12) if peak else None
    cands = [r for r in g["rows"] if r["side"] == "peft" and r.get("tokens_per_s") and not r.get("error")
             and (best_of == "all" or r.get("base_method") != "full")]
    best = max(cands, key=lambda r: r["tokens_per_s"]) if cands else None
    g["best_peft"] = best["config"] if best else None
    g["best_peft_tokens_per_s"] = best["tokens_per_s"] if best else None
    baseline = {r["ours_config"]: r for r in g["rows"] if r["side"] == "ours@baseline" and r.get("tokens_per_s")}
    for r in g["rows"]:
        t = r.get("tokens_per_s")
        r["vs_best_peft"] = t / best["tokens_per_s"] if (t and best) else None
        b = baseline.get(r.get("ours_config")) if r["side"] == "ours" else None
        r["vs_baseline"] = t / b["tokens_per_s"] if (t and b) else None
        if r["side"] == "ours" and b and r.get("peak_device_bytes") and b.get("peak_device_bytes"):
            r["mem_vs_baseline"] = r["peak_device_bytes"] / b["peak_device_bytes"]
        r["is_best_peft"] = best is not None and r is best


def gib(x):
    return f"{x / 2**30:.1f}" if isinstance(x, (int, float)) and x else "-"


def kfmt(t):
    return f"{t / 1000:.1f}k" if t >= 10000 else f"{t:.0f}"


def notes_of(r):
    out = []
    if r["side"] == "peft":
        if r.get("compile"):
            c = f"compile {r['compile_s']:.0f} s" if isinstance(r.get("compile_s"), (int, float)) else "compiled"
            if r.get("compile_mode") and r["compile_mode"] != "default":
                c += f" ({r['compile_mode']})"
            if r.get("graph_breaks"):
                c += f", {r['graph_breaks']} graph breaks"
            if r.get("recompiles_timed"):
                c += f", {r['recompiles_timed']} recompiles in timed steps"
            out.append(c)
        if r.get("init_s") and r.get("base_method") == "pissa":
            out.append(f"init {r['init_s']:.1f} s")
    if r.get("remark"):
        out.append(r["remark"])
    if isinstance(r.get("wall_s"), (int, float)):
        out.append(f"wall {r['wall_s']:.0f} s")
    return "; ".join(out)


def group_table(g, peak_label):
    L, PL = g.get("layers"), g.get("preset_layers")
    layers = f"{L} layers" if L and (not PL or PL == L) else (f"{L} of {PL} layers" if L else "")
    mb, ga = g.get("micro_batch"), g.get("grad_accum")
    title = f"### {g['shape']}" + (f" ({layers})" if layers else "") + f", micro-batch {mb} × {g.get('seq_len', 512)}"
    if ga:
        title += f", grad-accum {ga}"
    lines = [title, ""]
    info = [f"N = {g['n_linear'] / 1e9:.3f} B matmul parameters" if g.get("n_linear") else "N unknown (no config.json)"]
    if ga and mb:
        info.append(f"{mb * g.get('seq_len', 512) * ga} tokens per optimizer step and group")
    info.append(f"best PEFT: {g['best_peft']} ({g['best_peft_tokens_per_s']:.0f} tokens/s)" if g.get("best_peft")
                else "best PEFT: none measured")
    lines += ["; ".join(info) + f"; MFU against {peak_label}.", ""]
    lines += ["| run | K | tokens/s | MFU | vs best PEFT | vs baseline | peak GiB (device) | alloc / reserved GiB | step (s) | notes |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in g["rows"]:
        name = r["config"]
        if r.get("error"):
            skipped = bool((r.get("run_status") or {}).get("skipped"))
            lines.append(f"| {name} | {r.get('groups', 1)} | {'skipped' if skipped else 'failed'} | | | | "
                         f"{gib(r.get('peak_device_bytes'))} | | | {r['error'][:160].replace('|', '/')}"
                         + (f"; wall {r['wall_s']:.0f} s" if isinstance(r.get("wall_s"), (int, float)) and not skipped
                            else "") + " |")
            continue
        tps = f"{r['tokens_per_s']:.0f}"
        if r.get("is_best_peft"):
            name, tps = f"**{name}**", f"**{tps}**"
        mfu = f"{100 * r['mfu']:.1f} %" if r.get("mfu") else "-"
        vs = f"{r['vs_best_peft']:.2f}x" if r.get("vs_best_peft") else "-"
        vb = f"{r['vs_baseline']:.2f}x" if r.get("vs_baseline") else "-"
        if r.get("mem_vs_baseline"):
            vb += f" (mem {r['mem_vs_baseline']:.2f}x)"
        ar = (f"{gib(r.get('peak_alloc_bytes'))} / {gib(r.get('peak_reserved_bytes'))}" if r["side"] == "peft" else "-")
        lines.append(f"| {name} | {r.get('groups', 1)} | {tps} | {mfu} | {vs} | {vb} | {gib(r.get('peak_device_bytes'))} | "
                     f"{ar} | {r['step_s_median']:.3f} | {notes_of(r).replace('|', '/')} |")
    return lines


# The memory ledger's parts (hdpissa-train's summary "peak_memory_parts", bytes at the sampled peak)
# folded into a few columns; a part is matched by its name's prefix, the first matching column wins.
MEMORY_COLUMNS = [
    ("linears", ("model.linears",)),
    ("embedding + classifier", ("model.embedding+classifier",)),
    ("activations", ("model.activations",)),
    ("model scratch + loss", ("model.",)),
    ("adapters, grads, optimizer", ("adapter.", "dwu.", "dp.", "method")),
    ("W precision / masters / FP8", ("w-precision.", "w.", "fp8.")),
    ("other tracked", ("",)),
]


def memory_columns(parts):
    """{column: bytes} for the MEMORY_COLUMNS plus 'untracked' (context, library handles)."""
    cols = {name: 0 for name, _ in MEMORY_COLUMNS}
    untracked = 0
    for part, b in parts.items():
        if part == "untracked":
            untracked += b
            continue
        for name, prefixes in MEMORY_COLUMNS:
            if any(part.startswith(p) for p in prefixes):
                cols[name] += b
                break
    cols["untracked"] = untracked
    return cols


def memory_table(g):
    rows = [r for r in g["rows"] if r.get("memory_parts")]
    if not rows:
        return []
    names = [n for n, _ in MEMORY_COLUMNS] + ["untracked"]
    lines = ["Ours at the peak, GiB (the trainer's memory ledger; untracked = device-wide peak - tracked: the CUDA "
             "context, loaded kernels, library handles' own workspaces):", "",
             "| run | " + " | ".join(names) + " | total |", "|---|" + "---|" * (len(names) + 1)]
    for r in rows:
        c = memory_columns(r["memory_parts"])
        lines.append(f"| {r['config']} | " + " | ".join(f"{c[n] / 2**30:.2f}" for n in names)
                     + f" | {sum(c.values()) / 2**30:.2f} |")
    return lines + [""]


def shape_groups(runs, skip):
    groups = []
    for sd in sorted(p for p in glob.glob(os.path.join(runs, "*")) if os.path.isdir(p)):
        shape = os.path.basename(sd)
        cfg = os.path.join(sd, "config.json")
        n = n_linear_from_config(cfg) if os.path.exists(cfg) else None
        sh = read_json(os.path.join(sd, "shape.json"), {}) or {}
        c = read_json(cfg, {}) or {}
        mbdirs = []
        for md in glob.glob(os.path.join(sd, "mb*")):
            m = re.fullmatch(r"mb(\d+)(?:-ga(\d+))?", os.path.basename(md))
            if m and os.path.isdir(md):
                mbdirs.append((int(m.group(1)), int(m.group(2) or 0), md))
        for mb, _, md in sorted(mbdirs):
            run = read_json(os.path.join(md, "run.json"), {}) or {}
            rows = collect_group(md, skip)
            ga = run.get("grad_accum") or next((r.get("grad_accum") for r in rows if r.get("grad_accum")), None)
            groups.append({"shape": shape, "layers": sh.get("layers") or c.get("num_hidden_layers"),
                           "preset_layers": sh.get("preset_layers"), "micro_batch": run.get("micro_batch", mb),
                           "grad_accum": ga, "seq_len": run.get("seq_len", 512), "n_linear": n, "rows": rows})
    return groups


def legacy_group(a):
    n = n_linear_from_config(a.config)
    peft = [r for r in (read_jsonl(a.peft) if os.path.exists(a.peft) else []) if r.get("side") == "peft"]
    for r in peft:
        r.setdefault("groups", 1)
        r.setdefault("base_method", peft_base(r))
    ours = [ours_record(p, a.skip, "ours") for p in sorted(glob.glob(os.path.join(a.ours_dir, "ours-*.jsonl")))]
    ours.sort(key=ours_sort_key)
    c = read_json(a.config, {}) or {}
    mb = next((r.get("micro_batch") for r in peft if r.get("micro_batch")), 2)
    ga = next((r.get("grad_accum") for r in peft if r.get("grad_accum")), 8)
    return {"shape": "model", "layers": c.get("num_hidden_layers"), "preset_layers": None, "micro_batch": mb,
            "grad_accum": ga, "seq_len": 512, "n_linear": n, "rows": ours + peft}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", help="the driver's run directory (see the module doc)")
    ap.add_argument("--peft", help="legacy: one peft.jsonl (also holds the bf16 peak)")
    ap.add_argument("--ours-dir", help="legacy: directory of ours-<cfg>.jsonl")
    ap.add_argument("--config", help="legacy: the benchmark model's config.json")
    ap.add_argument("--out-prefix", required=True)
    ap.add_argument("--skip", type=int, default=1, help="our warm-up steps to drop")
    ap.add_argument("--peak-tflops", type=float, default=NOMINAL_PEAK,
                    help="bf16 peak used when the run measured none (default: H200 dense bf16, nominal)")
    ap.add_argument("--best-of", choices=("adapter", "all"), default="adapter",
                    help="which PEFT rows compete for 'best PEFT' (adapter: lora/pissa; all: + full)")
    ap.add_argument("--note", action="append", default=[], help="a line printed under the tables (repeatable)")
    a = ap.parse_args()
    if a.runs:
        dev = read_jsonl(os.path.join(a.runs, "device.jsonl")) if os.path.exists(os.path.join(a.runs, "device.jsonl")) else []
        meta = read_json(os.path.join(a.runs, "meta.json"), {}) or {}
        groups = shape_groups(a.runs, a.skip)
    elif a.peft and a.ours_dir and a.config:
        dev = read_jsonl(a.peft) if os.path.exists(a.peft) else []
        meta = {}
        groups = [legacy_group(a)]
    else:
        ap.error("expected --runs DIR, or --peft, --ours-dir and --config")
    every = dev + [r for g in groups for r in g["rows"]]
    measured = [r["peak_tflops"] for r in dev if r.get("config") == "bf16-peak" and r.get("peak_tflops")]
    measured += [r["peak_tflops"] for g in groups for r in g["rows"] if r.get("peak_tflops")]
    peak = measured[0] if measured else a.peak_tflops
    peak_label = (f"the bf16 matmul peak measured in this run, {peak:.0f} TFLOP/s" if measured
                  else f"a nominal bf16 peak of {peak:.1f} TFLOP/s (none measured)")
    gpu = next((r["gpu"] for r in every if r.get("gpu")), "?")
    for g in groups:
        finish_group(g, peak, a.best_of)
    versions = next((r["versions"] for g in groups for r in g["rows"] if r.get("versions")), None)
    summary = {"gpu": gpu, "bf16_peak_tflops": peak, "peak_measured": bool(measured), "best_of": a.best_of,
               "skip": a.skip, "meta": meta, "versions": versions, "groups": groups}
    with open(a.out_prefix + ".json", "w") as f:
        json.dump(summary, f, indent=1)
    cols = ["shape", "layers", "micro_batch", "grad_accum", "config", "side", "method", "groups", "tokens_per_s",
            "mfu", "vs_best_peft", "vs_baseline", "is_best_peft", "peak_device_bytes", "peak_alloc_bytes",
            "peak_reserved_bytes", "peak_alloc_timed_bytes", "peak_reserved_timed_bytes", "step_s_median",
            "tokens_per_step", "timed_steps", "first_step_s", "compile_s", "graph_breaks", "recompiles_timed",
            "init_s", "load_s", "wall_s", "loss_first", "loss_last", "error", "remark"]
    with open(a.out_prefix + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for g in groups:
            for r in g["rows"]:
                w.writerow({**{k: g.get(k) for k in ("shape", "layers", "micro_batch", "grad_accum")}, **r})
    head = f"GPU: {gpu}; bf16 peak for MFU: {peak_label}"
    if versions:
        head += "; " + ", ".join(f"{k} {v}" for k, v in versions.items())
    lines = [head, ""]
    if meta.get("baseline_label"):
        lines += [f"ours@baseline = {meta['baseline_label']}", ""]
    lines += [f"Ours: {a.skip} warm-up step(s) dropped per run; tokens/s counts every input token (all K groups' "
              "for hdpissa-K8). Ratios: tokens/s over the best PEFT row of the same table"
              + (" (adapter methods)" if a.best_of == "adapter" else "") + " and, for ours, over ours@baseline of the "
              "same configuration. Peak GiB (device): device-wide (total - free) on both sides; alloc / reserved: "
              "torch's counters (PEFT only). MFU at 4N (6N for full), attention not counted.", ""]
    if not groups:
        lines += ["No runs found.", ""]
    for g in groups:
        lines += group_table(g, peak_label) + [""]
        lines += memory_table(g)
    for n in list(meta.get("notes") or []) + a.note:
        if n:
            lines.append(n)
    md = "\n".join(lines).rstrip() + "\n"
    with open(a.out_prefix + ".md", "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
