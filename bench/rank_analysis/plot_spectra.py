#!/usr/bin/python3
"""Normalised singular spectra σ_i/σ_1 of ΔW per method (log scale), like the paper's Fig. 3 / 7.

Inputs are the --json files of hdpissa-rank-analysis, one per method:

  plot_spectra.py --out spectra.png --bound "2Kr, K=8=64" --bound "2r=8" \
      lora=lora.json pissa=pissa.json hdpissa-K8=k8.json

One panel per module (q, k, v, o, gate, up, down). By default each curve is the geometric mean of
σ_i/σ_1 over the decoder layers (so one plot summarises the model); --layer N plots layer N only.
Vertical dashed lines mark the rank bounds given with --bound LABEL=INDEX (e.g. 2Kr). A horizontal
dotted line marks --tau (the numerical-rank threshold). Needs matplotlib and numpy only.
"""
import argparse
import json
import math
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

MODULES = ["q", "k", "v", "o", "gate", "up", "down"]


def load(path):
    with open(path) as f:
        j = json.load(f)
    by_module = {}
    for layer in j["layers"]:
        by_module.setdefault(layer["module"] or "other", []).append(layer)
    return j, by_module


def curve(layers, which):
    """σ_i/σ_1 for one layer (which = index) or the geometric mean over layers (which = None)."""
    rows = []
    for l in layers:
        if which is not None and l["layer"] != which:
            continue
        s = np.asarray(l["sigma"], dtype=float)
        if s.size == 0 or s[0] <= 0:
            continue
        rows.append(np.maximum(s / s[0], 1e-300))
    if not rows:
        return None
    n = min(len(r) for r in rows)
    return np.exp(np.mean(np.log(np.stack([r[:n] for r in rows])), axis=0))


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="LABEL=FILE.json (hdpissa-rank-analysis --json output)")
    ap.add_argument("--out", required=True, help="PNG file")
    ap.add_argument("--layer", type=int, default=None, help="plot this decoder layer only (default: geometric mean)")
    ap.add_argument("--bound", action="append", default=[], help="LABEL=INDEX vertical line (1-based rank)")
    ap.add_argument("--tau", type=float, default=1e-3, help="horizontal line at the numerical-rank threshold")
    ap.add_argument("--title", default=None)
    ap.add_argument("--modules", default=",".join(MODULES))
    a = ap.parse_args(argv)

    runs = []
    for spec in a.runs:
        if "=" not in spec:
            ap.error(f"expected LABEL=FILE.json, found '{spec}'")
        label, path = spec.split("=", 1)
        try:
            runs.append((label, *load(path)))
        except (OSError, ValueError, KeyError) as e:
            ap.error(f"{path}: cannot read a hdpissa-rank-analysis JSON file ({e})")
    bounds = []
    for b in a.bound:
        label, _, idx = b.rpartition("=")
        bounds.append((label, float(idx)))

    modules = [m for m in a.modules.split(",") if any(m in bm for _, _, bm in runs)]
    if not modules:
        ap.error("none of the requested modules is in the inputs")
    cols = min(4, len(modules))
    rows = math.ceil(len(modules) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, m in zip(axes.flat, modules):
        shape = None
        for i, (label, _, bm) in enumerate(runs):
            c = curve(bm.get(m, []), a.layer)
            if c is None:
                continue
            shape = bm[m][0]["shape"]
            ax.semilogy(np.arange(1, len(c) + 1), c, label=label, color=colours[i % len(colours)], lw=1.4)
        if shape is None:
            ax.set_yscale("log")
            ax.text(0.5, 0.5, "ΔW = 0", transform=ax.transAxes, ha="center", fontsize=8)
        for j, (label, x) in enumerate(bounds):
            if shape is None or x <= min(shape):
                ax.axvline(x, color="0.4", ls="--", lw=0.8)
                ax.text(x, 0.03, label, rotation=90, va="bottom", ha="right", fontsize=6, color="0.3",
                        transform=ax.get_xaxis_transform())
        ax.axhline(a.tau, color="0.6", ls=":", lw=0.8)
        ax.set_ylim(max(1e-9, ax.get_ylim()[0]), 3)
        ax.set_title(f"{m}_proj {tuple(shape) if shape else ''}", fontsize=9)
        ax.set_xlabel("i", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(modules):]:
        ax.axis("off")
    axes.flat[0].set_ylabel("σ_i / σ_1", fontsize=8)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(labels), 6),
               fontsize=7, frameon=False)
    where = f"layer {a.layer}" if a.layer is not None else "geometric mean over layers"
    fig.suptitle(a.title or f"normalised spectrum of ΔW ({where}); dotted: τ = {a.tau:g}", fontsize=10)
    fig.tight_layout(rect=(0, 0.07 * (1 + (len(labels) - 1) // 6) / rows, 1, 0.95))
    fig.savefig(a.out, dpi=110)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
