#!/usr/bin/python3
"""Tables and plots of a scripts/reproduce.sh run (read by docs/results.md).

Reads OUT/<run>/{run.json, metrics.jsonl, rank.csv, rank.json, diff_vs_exact.csv} and writes
  OUT/summary.md      markdown tables: losses, effective ranks (all four §8 metrics), per-module
                      numerical rank, rank ratios vs LoRA / PiSSA, the mute-scalar sweep
  OUT/summary.json    the same numbers
  OUT/spectra.png     σ_i/σ_1 per module (geometric mean over layers), rank bounds marked
  OUT/loss.png        training loss (smoothed) per method
Needs matplotlib and numpy only.
"""
import argparse
import csv
import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import plot_spectra  # noqa: E402

MAIN = ["full", "lora", "pissa", "hdpissa-K2", "hdpissa-K4", "hdpissa-K8", "lora-dwu", "pissa-dwu"]
MODULES = ["q", "k", "v", "o", "gate", "up", "down"]


def read_jsonl(path):
    out = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    out.append(json.loads(line))
    return out


def read_csv(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def run_summary(d):
    meta = json.load(open(os.path.join(d, "run.json")))
    m = read_jsonl(os.path.join(d, "metrics.jsonl"))
    steps = [r for r in m if r.get("type") == "step"]
    evals = [r for r in m if r.get("type") == "eval"]
    s = dict(meta)
    s["done"] = bool(steps) and steps[-1]["step"] == meta["steps"] and os.path.exists(os.path.join(d, "rank.csv"))
    if steps:
        losses = [r["loss"] for r in steps]
        tail = max(1, len(losses) // 5)
        s["losses"] = losses
        s["first_loss"] = losses[0]
        s["mean_loss"] = float(np.mean(losses))
        s["last_loss"] = float(np.mean(losses[-tail:]))  # mean of the last 20% of steps
        s["seconds"] = steps[-1].get("elapsed_s", float("nan"))
    for e in evals:
        if e.get("when") == "before":
            s["eval_before"] = e["eval_loss"]
        if e.get("when") == "after":
            s["eval_after"] = e["eval_loss"]
    rows = read_csv(os.path.join(d, "rank.csv"))
    if rows:
        def mean(key):
            return float(np.mean([float(r[key]) for r in rows]))
        s["num_rank"] = mean("numerical_rank")
        s["rank_above_noise"] = mean("rank_above_noise")
        s["energy_rank"] = mean("energy_rank")
        s["stable_rank"] = mean("stable_rank")
        s["entropy_rank"] = mean("entropy_rank")
        s["delta_fro"] = math.sqrt(sum(float(r["delta_fro"]) ** 2 for r in rows))
        s["within_noise"] = sum(int(r["within_noise"]) for r in rows)
        s["per_module"] = {}
        for mod in MODULES:
            rr = [r for r in rows if r["module"] == mod]
            if rr:
                s["per_module"][mod] = {
                    "shape": [int(rr[0]["rows"]), int(rr[0]["cols"])],
                    "num_rank": float(np.mean([float(r["numerical_rank"]) for r in rr])),
                    "entropy_rank": float(np.mean([float(r["entropy_rank"]) for r in rr])),
                }
    diff = read_csv(os.path.join(d, "diff_vs_exact.csv"))
    if diff:
        s["diff_fro"] = math.sqrt(sum(float(r["delta_fro"]) ** 2 for r in diff))
    return s


def first_order_bound(method, K, r):
    """Rank bound of the accumulated ΔW to first order in the step (exact for LoRA / PiSSA / LoRA+DWU).

    LoRA: ΔW = B A with B₀ = 0, rank ≤ r. PiSSA: B A − B₀ A₀, ≤ 2r. DWU methods keep A_j, B_j fixed, so
    Σ_t (dB_j A_j + B_j dA_j) = (Σ dB_j) A_j + B_j (Σ dA_j): HD-PiSSA ≤ 2Kr (K disjoint slices),
    PiSSA+DWU ≤ 2r (one shared slice), LoRA+DWU ≤ Kr (B_j = 0 ⇒ g_A = 0 ⇒ dA_j = 0 exactly, and no
    second-order term). Only the Σ dB dA terms of HD-PiSSA / PiSSA+DWU go beyond. None for full FT."""
    return {"full": None, "lora": r, "pissa": 2 * r, "pissa-dwu": 2 * r, "lora-dwu": K * r}.get(method, 2 * K * r)


def fmt(x, f="{:.4f}"):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f.format(x)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--gamma-k", type=int, default=8)
    a = ap.parse_args(argv)
    runs = {}
    for name in sorted(os.listdir(a.out)):
        d = os.path.join(a.out, name)
        if os.path.isfile(os.path.join(d, "run.json")):
            runs[name] = run_summary(d)
    r = a.rank
    md = []
    main_runs = [n for n in MAIN if n in runs]
    first = next(iter(runs.values()))
    md.append(f"Per-group rank r = {r}; every run: {first['steps']} steps, {first['global_batch']} sequences per "
              f"step, lr {first['lr']}" + (f", extra trainer flags `{first['extra_args']}`" if first.get("extra_args") else "")
              + ".\n")
    md.append("| run | method | K | train loss first → last (mean) | held-out loss before → after | "
              "‖ΔW‖_F | num. rank (τ=1e-3) | rank > fp32 floor | 90%-energy rank | stable rank | entropy rank | time (s) |")
    md.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n in main_runs:
        s = runs[n]
        md.append(f"| {n}{'' if s['done'] else ' (incomplete)'} | {s['method']} | {s['K']} | "
                  f"{fmt(s.get('first_loss'))} → {fmt(s.get('last_loss'))} ({fmt(s.get('mean_loss'))}) | "
                  f"{fmt(s.get('eval_before'))} → {fmt(s.get('eval_after'))} | {fmt(s.get('delta_fro'), '{:.3g}')} | "
                  f"{fmt(s.get('num_rank'), '{:.1f}')} | {fmt(s.get('rank_above_noise'), '{:.1f}')} | "
                  f"{fmt(s.get('energy_rank'), '{:.1f}')} | {fmt(s.get('stable_rank'), '{:.2f}')} | "
                  f"{fmt(s.get('entropy_rank'), '{:.1f}')} | {fmt(s.get('seconds'), '{:.0f}')} |")
    any_rows = next((read_csv(os.path.join(a.out, n, "rank.csv")) for n in main_runs
                     if read_csv(os.path.join(a.out, n, "rank.csv"))), [])
    n_targets = len(any_rows)
    n_dec = len({r["layer"] for r in any_rows})
    min_width = min((min(int(r["rows"]), int(r["cols"])) for r in any_rows), default=0)
    md.append(f"\nRank metrics are means over the {n_targets} target layers ({n_dec} decoder layers × q, k, v, o, gate, up, down). "
              "Train loss 'last' = mean over the last 20% of steps.\n")
    # Ratios vs LoRA / PiSSA.
    md.append("| run | num. rank / LoRA | num. rank / PiSSA | entropy rank / LoRA | entropy rank / PiSSA |")
    md.append("|---|---|---|---|---|")
    for n in main_runs:
        s = runs[n]
        cells = []
        for key in ("num_rank", "entropy_rank"):
            for base in ("lora", "pissa"):
                b = runs.get(base, {}).get(key)
                cells.append(fmt(s.get(key) / b, "{:.2f}×") if b and s.get(key) is not None else "–")
        md.append(f"| {n} | " + " | ".join(cells) + " |")
    # Per-module numerical rank.
    md.append(f"\nNumerical rank (τ = 1e-3) per module, mean over the {n_dec} layers; in brackets min(out, in) "
              f"and the first-order rank bound b (LoRA r, PiSSA 2r, HD-PiSSA 2Kr, LoRA+DWU Kr, PiSSA+DWU 2r), capped at min(out, in):\n")
    shapes = {}
    for s in runs.values():
        for mod, v in s.get("per_module", {}).items():
            shapes[mod] = v["shape"]
    md.append("| run | " + " | ".join(f"{m} {tuple(shapes[m])}" for m in MODULES if m in shapes) + " |")
    md.append("|---|" + "---|" * len([m for m in MODULES if m in shapes]))
    for n in main_runs:
        s = runs[n]
        bound = first_order_bound(s["method"], s["K"], r)
        cells = []
        for m in MODULES:
            if m not in shapes:
                continue
            v = s.get("per_module", {}).get(m)
            full = min(shapes[m])
            b = full if bound is None else min(bound, full)
            cells.append(f"{v['num_rank']:.1f} [{full}, {b}]" if v else "–")
        md.append(f"| {n} | " + " | ".join(cells) + " |")
    # Numerical rank vs τ, and the spectrum just past the first-order bound.
    taus = [1e-2, 1e-3, 1e-4, 1e-5, 1e-6]
    md.append("\nNumerical rank #{σ_i > τσ_1} (mean over layers) as τ varies, and the spectrum just past each "
              "method's first-order rank bound b (r for LoRA, 2r for PiSSA/PiSSA+DWU, Kr for LoRA+DWU, 2Kr for "
              "HD-PiSSA): median over the layers where b < min(out, in) of σ_{b+1}/σ_1, next to the median "
              "single-rounding fp32 floor/σ_1 that the tool estimates:\n")
    md.append("| run | " + " | ".join(f"τ = {t:g}" for t in taus) + " | b | σ_{b+1}/σ_1 | fp32 floor/σ_1 |")
    md.append("|---|" + "---|" * (len(taus) + 3))
    for n in main_runs:
        s = runs[n]
        path = os.path.join(a.out, n, "rank.json")
        if not os.path.exists(path):
            continue
        layers = json.load(open(path))["layers"]
        cnt = []
        for t in taus:
            cnt.append(np.mean([sum(1 for x in l["sigma"] if l["sigma"][0] > 0 and x > t * l["sigma"][0])
                                for l in layers]))
        b = first_order_bound(s["method"], s["K"], r)
        tail, floor = [], []
        if b is not None:
            for l in layers:
                sg = l["sigma"]
                if b < len(sg) and sg[0] > 0:
                    tail.append(sg[b] / sg[0])
                    floor.append(l["noise_floor"] / sg[0])
        s["rank_vs_tau"] = dict(zip([str(t) for t in taus], cnt))
        s["tail_past_bound"] = float(np.median(tail)) if tail else None
        md.append(f"| {n} | " + " | ".join(f"{c:.1f}" for c in cnt) + f" | {b if b is not None else '–'} | "
                  + (f"{np.median(tail):.1e} ({len(tail)} layers)" if tail else "– (b ≥ min(out, in))")
                  + " | " + (f"{np.median(floor):.1e}" if floor else "–") + " |")
    # Share of ΔW outside the first-order subspace {X V_Nᵀ + U_N Y} of W_init (files subspace-N<n>.csv).
    ns = sorted({int(f[len("subspace-N"):-4]) for n in main_runs for f in os.listdir(os.path.join(a.out, n))
                 if f.startswith("subspace-N") and f.endswith(".csv")})
    if ns:
        md.append(f"\nShare of the update outside the first-order subspace {{X V_Nᵀ + U_N Y}} of the *initial* W "
                  f"(U_N, V_N: its top-N singular vectors): ‖ΔW − PΔW‖_F / ‖ΔW‖_F over all {n_targets} layers. HD-PiSSA's "
                  "first-order steps stay inside N = Kr, PiSSA's inside N = r; only second-order terms leave. "
                  f"(For N ≥ {min_width} the narrowest layers, {min_width} wide, are entirely inside.)\n")
        md.append("| run | " + " | ".join(f"N = {n}" for n in ns) + " |")
        md.append("|---|" + "---|" * len(ns))
        for n in main_runs:
            cells = []
            for N in ns:
                rows = read_csv(os.path.join(a.out, n, f"subspace-N{N}.csv"))
                if not rows:
                    cells.append("–")
                    continue
                tot = sum(float(x["delta_fro"]) ** 2 for x in rows)
                outside = sum((float(x["outside_subspace"]) * float(x["delta_fro"])) ** 2 for x in rows)
                share = math.sqrt(outside / tot) if tot > 0 else 0.0
                runs[n].setdefault("outside_subspace", {})[str(N)] = share
                cells.append(f"{share:.2e}")
            md.append(f"| {n} | " + " | ".join(cells) + " |")
    # γ sweep.
    exact = runs.get(f"hdpissa-K{a.gamma_k}")
    gam = sorted([n for n in runs if n.startswith("gamma-")], key=lambda n: -float(n.split("-", 1)[1]))
    if gam and exact:
        md.append(f"\nMute scalar sweep (HD-PiSSA K = {a.gamma_k}): the literal forward x(W + γ·α·B A)ᵀ with "
                  "gradients × 1/γ, vs the exact mute (no adapter in the forward). ‖W_γ − W_exact‖_F / ‖ΔW_exact‖_F "
                  "over all target layers.\n")
        md.append("| γ | train loss last | held-out loss after | ‖W_γ − W_exact‖ / ‖ΔW_exact‖ | num. rank |")
        md.append("|---|---|---|---|---|")
        md.append(f"| exact mute | {fmt(exact.get('last_loss'))} | {fmt(exact.get('eval_after'))} | 0 | "
                  f"{fmt(exact.get('num_rank'), '{:.1f}')} |")
        for n in gam:
            s = runs[n]
            rel = s["diff_fro"] / exact["delta_fro"] if s.get("diff_fro") is not None and exact.get("delta_fro") else None
            md.append(f"| {n.split('-', 1)[1]}{'' if s['done'] else ' (incomplete)'} | {fmt(s.get('last_loss'))} | "
                      f"{fmt(s.get('eval_after'))} | {fmt(rel, '{:.3g}')} | {fmt(s.get('num_rank'), '{:.1f}')} |")
    text = "\n".join(md) + "\n"
    open(os.path.join(a.out, "summary.md"), "w").write(text)
    json.dump({k: {kk: vv for kk, vv in v.items() if kk != "losses"} for k, v in runs.items()},
              open(os.path.join(a.out, "summary.json"), "w"), indent=1)
    print(text)

    # Spectra plot (main runs with rank.json).
    specs = [f"{n}={os.path.join(a.out, n, 'rank.json')}" for n in main_runs
             if os.path.exists(os.path.join(a.out, n, "rank.json"))]
    if specs:
        bounds = [f"r={r}", f"2r={2 * r}"] + [f"2Kr K={k}={2 * k * r}" for k in (2, 4, 8)]
        args = ["--out", os.path.join(a.out, "spectra.png")]
        for b in bounds:
            args += ["--bound", b]
        plot_spectra.main(args + specs)
        args = ["--out", os.path.join(a.out, "spectra_core.png")]
        for b in bounds:
            args += ["--bound", b]
        core = [s for s in specs if s.split("=")[0] in ("lora", "pissa", "hdpissa-K2", "hdpissa-K4", "hdpissa-K8", "full")]
        plot_spectra.main(args + core)
    # Loss curves.
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for n in main_runs:
        L = runs[n].get("losses")
        if not L:
            continue
        w = max(1, len(L) // 10)
        sm = np.convolve(L, np.ones(w) / w, mode="valid")
        ax.plot(np.arange(w, len(L) + 1), sm, label=n, lw=1.3)
    ax.set_xlabel("step")
    ax.set_ylabel(f"training loss (moving mean)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, "loss.png"), dpi=110)
    print(f"wrote {os.path.join(a.out, 'loss.png')}")


if __name__ == "__main__":
    main(sys.argv[1:])
