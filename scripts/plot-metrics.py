#!/usr/bin/env python3
"""Plots an hdpissa-train --metrics JSONL: training loss (with the held-out eval points), learning
rate and tokens/s against the step, one PNG.

    scripts/plot-metrics.py runs/demo-metrics.jsonl -o runs/demo-metrics.png [--title TEXT]

Records used: {"type": "step", "step", "loss", "lr", "tokens_per_s"} and {"type": "eval", "step",
"eval_loss"}; others (summary, gsm8k) are ignored. A resumed run appends to the same file: a step
seen twice keeps its last record. Exit status 2 when matplotlib is missing, 1 on an unusable file.
"""
import argparse
import json
import sys


def read(path):
    steps, evals = {}, []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"{path}:{n}: expected one JSON object per line, found {line[:60]!r} ({e})")
            if r.get("type") == "step":
                steps[r["step"]] = r
            elif r.get("type") == "eval":
                evals.append((r["step"], r["eval_loss"]))
    if not steps:
        sys.exit(f"{path}: no step records (type \"step\") found")
    return [steps[s] for s in sorted(steps)], evals


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("metrics", help="hdpissa-train --metrics JSONL")
    ap.add_argument("-o", "--output", help="PNG to write (default: METRICS with .png)")
    ap.add_argument("--title", default=None)
    a = ap.parse_args()
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot-metrics: matplotlib is not installed (Debian: python3-matplotlib)", file=sys.stderr)
        return 2
    steps, evals = read(a.metrics)
    out = a.output or (a.metrics.rsplit(".", 1)[0] + ".png")
    x = [r["step"] for r in steps]
    fig, ax = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    ax[0].plot(x, [r["loss"] for r in steps], lw=1, label="train loss")
    if evals:
        ax[0].plot([e[0] for e in evals], [e[1] for e in evals], "o-", ms=4, label="eval loss")
    ax[0].set_ylabel("loss")
    ax[0].legend()
    ax[1].plot(x, [r["lr"] for r in steps], lw=1, color="tab:green")
    ax[1].set_ylabel("learning rate")
    ax[2].plot(x, [r.get("tokens_per_s", 0) for r in steps], lw=1, color="tab:red")
    ax[2].set_ylabel("tokens / s")
    ax[2].set_xlabel("step")
    for axis in ax:
        axis.grid(alpha=0.3)
    fig.suptitle(a.title or a.metrics)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"plot-metrics: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
