#!/usr/bin/env python3
"""Collects the throughput benchmark's records into JSON, CSV and a markdown table.

Inputs: the PEFT side's JSONL (peft_throughput.py --out; it also holds the measured bf16 peak) and
one metrics JSONL per configuration of our trainer (hdpissa-train --metrics), named
ours-<config>.jsonl, where <config> is <method> or <method>-K<groups>, optionally followed by
_<attention> (flash or gemm: HDPISSA_LLAMA_ATTENTION of that run).

Our steady state: the trainer writes one {"type": "step", "tokens", "step_s", "tokens_per_s"} record
per optimizer step; the first --skip steps (warm-up: cuBLAS heuristics, allocator growth) are
dropped and tokens/s = sum(tokens) / sum(step_s) over the rest. Peak memory: the largest
"peak_device_bytes" in any record of the file.

MFU uses the same definition as the PEFT side (peft_throughput.py): 4N FLOPs per token for adapter
methods (hdpissa: muted adapters, forward 2N + input gradients 2N), 6N for full fine-tuning, N = the
parameters of the model's matrix multiplies (q, k, v, o, gate, up, down of every layer + lm_head),
here computed from the checkpoint's config.json, against the bf16 peak measured in the same run.

usage: summarize.py --peft peft.jsonl --ours-dir DIR --config MODEL/config.json --out-prefix PREFIX [--skip 1]
writes PREFIX.json, PREFIX.csv, PREFIX.md and prints the markdown table.
"""
import argparse
import csv
import glob
import json
import os
import statistics


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
                except ValueError as e:
                    raise SystemExit(f"summarize.py: {path}:{i + 1}: expected a JSON object per line: {e}")
    return out


def ours_record(path, skip, n_linear, peak):
    cfg = os.path.basename(path)[len("ours-"):-len(".jsonl")]
    base, _, attention = cfg.partition("_")  # optional _flash / _gemm: the GPU model's attention
    method, _, k = base.partition("-K")
    recs = read_jsonl(path)
    steps = [r for r in recs if r.get("type") == "step" and "step_s" in r and "tokens" in r]
    rec = {"side": "ours", "method": method, "groups": int(k) if k else 1, "config": f"ours-{cfg}", "source": path}
    peaks = [r["peak_device_bytes"] for r in recs if isinstance(r.get("peak_device_bytes"), (int, float))]
    rec["peak_device_bytes"] = max(peaks) if peaks else None
    timed = steps[skip:]
    if not timed:
        rec["error"] = f"{len(steps)} step records, none left after skipping {skip} warm-up steps"
        return rec
    secs = sum(r["step_s"] for r in timed)
    rec["tokens_per_s"] = sum(r["tokens"] for r in timed) / secs
    rec["step_s_median"] = statistics.median(r["step_s"] for r in timed)
    rec["tokens_per_step"] = statistics.median(r["tokens"] for r in timed)
    rec["timed_steps"] = len(timed)
    rec["warmup_steps"] = skip
    rec["flops_per_token"] = (6 if method == "full" else 4) * n_linear
    rec["mfu"] = rec["tokens_per_s"] * rec["flops_per_token"] / (peak * 1e12) if peak else None
    return rec


def gib(x):
    return f"{x / 2**30:.1f}" if isinstance(x, (int, float)) else "-"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--peft", required=True)
    ap.add_argument("--ours-dir", required=True)
    ap.add_argument("--config", required=True, help="the benchmark model's config.json")
    ap.add_argument("--out-prefix", required=True)
    ap.add_argument("--skip", type=int, default=1, help="our warm-up steps to drop")
    ap.add_argument("--note", default="", help="a line printed under the table (e.g. why our side is missing)")
    a = ap.parse_args()
    n_linear = n_linear_from_config(a.config)
    peft = read_jsonl(a.peft) if os.path.exists(a.peft) else []
    peak = next((r["peak_tflops"] for r in peft if r.get("config") == "bf16-peak"), None)
    gpu = next((r["gpu"] for r in peft if r.get("gpu")), "?")
    rows = [r for r in peft if r.get("side") == "peft"]
    for r in rows:
        r.setdefault("groups", 1)
    ours_files = sorted(glob.glob(os.path.join(a.ours_dir, "ours-*.jsonl")))
    rows += [ours_record(p, a.skip, n_linear, peak) for p in ours_files]
    base = next((r.get("tokens_per_s") for r in rows if r["config"] == "peft-lora" and r.get("tokens_per_s")), None)
    for r in rows:
        t = r.get("tokens_per_s")
        r["vs_peft_lora"] = t / base if (t and base) else None
    summary = {"gpu": gpu, "bf16_peak_tflops": peak, "n_linear": n_linear, "rows": rows}
    with open(a.out_prefix + ".json", "w") as f:
        json.dump(summary, f, indent=1)
    cols = ["config", "side", "method", "groups", "tokens_per_s", "vs_peft_lora", "step_s_median", "tokens_per_step",
            "timed_steps", "peak_alloc_bytes", "peak_reserved_bytes", "peak_device_bytes", "mfu", "init_s", "error"]
    with open(a.out_prefix + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)
    lines = [f"GPU: {gpu}; measured bf16 matmul peak: " + (f"{peak:.0f} TFLOP/s" if peak else "not measured")
             + f"; N (matmul parameters) = {n_linear / 1e9:.3f} B",
             "",
             "| run | K | tokens/s | vs PEFT LoRA | step (s) | tokens/step | peak memory (GiB) | MFU |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['config']} | {r.get('groups', 1)} | failed: {r['error'][:80]} | | | | | |")
            continue
        if r["side"] == "peft":
            mem = f"{gib(r.get('peak_alloc_bytes'))} alloc / {gib(r.get('peak_reserved_bytes'))} reserved"
        else:
            mem = f"{gib(r.get('peak_device_bytes'))} device"
        vs = f"{r['vs_peft_lora']:.2f}x" if r.get("vs_peft_lora") else "-"
        mfu = f"{100 * r['mfu']:.1f} %" if r.get("mfu") else "-"
        lines.append(f"| {r['config']} | {r.get('groups', 1)} | {r['tokens_per_s']:.0f} | {vs} | "
                     f"{r['step_s_median']:.3f} | {int(r['tokens_per_step'])} | {mem} | {mfu} |")
    if a.note:
        lines += ["", a.note]
    md = "\n".join(lines) + "\n"
    with open(a.out_prefix + ".md", "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
