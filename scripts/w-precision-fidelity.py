#!/usr/bin/env python3
"""Helpers of scripts/w-precision-fidelity.sh (numpy only):

  round-bf16 SRC_DIR DST_DIR   copy an HF checkpoint with every floating tensor rounded to the nearest
                               bf16 (stored F32), so that every policy starts from the same W_0
                               (bf16 policies round W_0 once at start; fp32-master would not)
  report WORK OUT_MD           the fidelity table of the runs under WORK/runs (see the .sh)
  collect WORK [NOTE]          writes WORK/runs.json from the files under WORK/runs (for a run cut short
                               before the .sh wrote it, or logs brought back without the checkpoints:
                               the report then takes the norms from hdpissa-rank-analysis's JSON —
                               delta_fro per analysed target — instead of the W files)

The report, per model × lr × policy (hdpissa; fp32-master is the reference):
  - rel_err   = ‖W_policy − W_fp32‖_F / ‖ΔW_fp32‖_F over every target linear (ΔW = W_final − W_0);
  - train loss (mean of the first / last 10 % of steps) and held-out loss at each evaluation;
  - rank metrics of ΔW_policy from hdpissa-rank-analysis (its JSON: entropy / stable / numerical
    rank, averaged over the layers) and
  - the policy's noise floor, measured: σ₁(W_policy − W_fp32) (the spectral norm of the policy's
    error matrix, from hdpissa-rank-analysis --init fp32 --final policy), and predicted for
    stochastic rounding (sr_floor below); `rank>floor` counts the singular values of ΔW_policy above
    the measured floor (directions that stand out of the policy's own noise).
"""
import glob
import json
import math
import os
import re
import struct
import sys

import numpy as np


# ---------------------------------------------------------------- safetensors (numpy)

def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            a, b = info["data_offsets"]
            f.seek(base + a)
            raw = f.read(b - a)
            dt = info["dtype"]
            if dt == "F32":
                x = np.frombuffer(raw, dtype="<f4")
            elif dt == "BF16":
                x = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
            elif dt == "F16":
                x = np.frombuffer(raw, dtype="<f2").astype(np.float32)
            else:
                out[name] = (dt, info["shape"], raw)
                continue
            out[name] = x.reshape(info["shape"]).astype(np.float32)
        return out


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name, v in tensors.items():
        if isinstance(v, tuple):
            dt, shape, raw = v
        else:
            dt, shape, raw = "F32", list(v.shape), np.ascontiguousarray(v, dtype="<f4").tobytes()
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def load_dir(d):
    files = sorted(glob.glob(os.path.join(d, "*.safetensors")))
    if not files:
        raise SystemExit(f"w-precision-fidelity: no *.safetensors in {d}")
    t = {}
    for f in files:
        t.update(read_safetensors(f))
    return t


def round_bf16(x):
    u = x.astype(np.float32).view(np.uint32)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return r.astype(np.uint32).view(np.float32)


def targets(t):
    return sorted(k for k, v in t.items() if k.endswith("_proj.weight") and not isinstance(v, tuple))


# ---------------------------------------------------------------- commands

def cmd_round(src, dst):
    import shutil
    os.makedirs(dst, exist_ok=True)
    for f in os.listdir(src):
        p = os.path.join(src, f)
        if f.endswith(".safetensors"):
            t = read_safetensors(p)
            write_safetensors(os.path.join(dst, f), {k: (v if isinstance(v, tuple) else round_bf16(v)) for k, v in t.items()})
        elif os.path.isfile(p):
            shutil.copy(p, os.path.join(dst, f))


def records(path, kind):
    out = []
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                j = json.loads(line)
                if j.get("type") == kind:
                    out.append(j)
    return out


def rank_summary(path):
    if not os.path.exists(path):
        return None
    j = json.load(open(path))
    L = j.get("layers", [])
    if not L:
        return None
    mean = lambda k: float(np.mean([x[k] for x in L]))
    return {"entropy": mean("entropy_rank"), "stable": mean("stable_rank"), "numerical": mean("numerical_rank"),
            "sigma": {x["name"]: x["sigma"] for x in L}, "sigma_max": {x["name"]: (x["sigma"][0] if x["sigma"] else 0.0) for x in L}}


def sr_floor(W, dW_ref, steps):
    """Predicted σ₁ of the stochastic-rounding noise in W after T steps. Step t rounds w + Δ_t to a
    bf16 neighbour with an error of mean 0 and variance u·|Δ_t| − Δ_t² ≤ u²/4 (u: the bf16 spacing at
    |w|), independently per element and step, so the accumulated error has variance Σ_t u·|Δ_t| ≈
    u·|ΔW| when the per-step updates keep their sign and stay below u (capped at T·u²/4): an iid
    matrix of rms s = √mean(min(u·|ΔW_fp32|, T·u²/4)) whose spectral norm is ≈ s·(√out + √in). A
    lower estimate where the updates change sign (then Σ|Δ_t| > |ΔW|)."""
    a = np.abs(W).astype(np.float64)
    u = np.exp2(np.floor(np.log2(np.maximum(a, 1e-30))) - 7)
    var = np.minimum(u * np.abs(dW_ref.astype(np.float64)), steps * u * u / 4.0)
    return math.sqrt(float(np.mean(var))) * (math.sqrt(W.shape[0]) + math.sqrt(W.shape[1]))


def json_fro(path):
    """sqrt(Σ delta_fro²) over the targets of a hdpissa-rank-analysis JSON (None if absent)."""
    if not path or not os.path.exists(path):
        return None
    L = json.load(open(path)).get("layers", [])
    return math.sqrt(sum(float(x["delta_fro"]) ** 2 for x in L)) if L else None


def cmd_collect(work, note):
    """runs.json from the files under WORK/runs: groups by (model, lr), policies in the .sh's order."""
    groups = {}
    for m in sorted(glob.glob(os.path.join(work, "runs", "*.jsonl"))):
        tag = os.path.basename(m)[:-len(".jsonl")]
        mt = re.match(r"^(.+)-lr([0-9.]+(?:e-?[0-9]+)?)-(.+)$", tag)
        if not mt:
            continue
        model, lr, policy = mt.groups()
        base = os.path.join(work, "runs", tag)
        groups.setdefault((model, lr), {})[policy] = {
            "output": base, "metrics": m, "log": os.path.join(work, "logs", tag + ".log"),
            "rank_json": base + ".rank.json", "err_json": base + ".err.json"}
    out = []
    for (model, lr), runs in groups.items():
        for p in ("fp32-master", "bf16-compensated", "bf16-sr"):
            runs.setdefault(p, {"output": "", "metrics": "", "log": "", "rank_json": "", "why": "the call ran out of time"})
        steps = max((r["step"] for r in records(runs["fp32-master"]["metrics"], "step")), default=0)
        out.append({"model": model, "lr": lr, "w0": os.path.join(work, "models", model), "steps": steps, "runs": runs})
    json.dump({"device": "cuda", "note": note, "groups": out}, open(os.path.join(work, "runs.json"), "w"), indent=1)


def fmt(x, p=3):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, float) and (abs(x) < 1e-3 or abs(x) >= 1e4) and x != 0:
        return f"{x:.2e}"
    return f"{x:.{p}f}" if isinstance(x, float) else str(x)


def cmd_report(work, out_md):
    runs = json.load(open(os.path.join(work, "runs.json")))
    lines = []
    lines.append("# W-precision fidelity (hdpissa, spec §5, issue 13 item 3)\n")
    lines.append(f"Produced by `scripts/w-precision-fidelity.sh` ({runs['device']}; {runs['note']}).\n")
    lines.append("| model | lr | policy | B/param | rel_err ‖W−W_fp32‖/‖ΔW_fp32‖ | train loss first→last 10% | held-out loss (each eval) "
                 "| ‖ΔW‖_F | entropy rank | stable rank | num. rank (τ=1e-3) | σ₁ floor measured | SR floor predicted | rank > floor |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    csv = ["model,lr,policy,step,loss"]
    for group in runs["groups"]:
        model, lr, w0dir, steps = group["model"], group["lr"], group["w0"], group["steps"]
        W0 = load_dir(w0dir) if os.path.isdir(w0dir) else None
        names = targets(W0) if W0 else []
        ref_dir = group["runs"].get("fp32-master")
        Wf = load_dir(ref_dir["output"]) if W0 and ref_dir and os.path.isdir(ref_dir["output"]) else None
        dref = math.sqrt(sum(float(np.sum((Wf[n].astype(np.float64) - W0[n]) ** 2)) for n in names)) if Wf else None
        if dref is None and ref_dir:  # no checkpoints: the analysed targets' norms from the rank JSON
            dref = json_fro(ref_dir.get("rank_json", ""))
        for policy in ("fp32-master", "bf16-compensated", "bf16-sr"):
            r = group["runs"].get(policy)
            if not r:
                continue
            have_w = W0 is not None and os.path.isdir(r["output"])
            if not have_w and not os.path.exists(r["metrics"]):
                lines.append(f"| {model} | {lr} | {policy} | – | not run ({r.get('why', 'see ' + r['log'])}) | | | | | | | | | |")
                continue
            W = load_dir(r["output"]) if have_w else None
            if W is not None:
                dW = math.sqrt(sum(float(np.sum((W[n].astype(np.float64) - W0[n]) ** 2)) for n in names))
            else:
                dW = json_fro(r["rank_json"])
            rel = None
            if W is not None and Wf and dref:
                rel = math.sqrt(sum(float(np.sum((W[n].astype(np.float64) - Wf[n]) ** 2)) for n in names)) / dref
            elif dref and json_fro(r.get("err_json", "")) is not None:
                rel = json_fro(r["err_json"]) / dref
            st = records(r["metrics"], "step")
            losses = [s["loss"] for s in st]
            for s in st:
                csv.append(f"{model},{lr},{policy},{s['step']},{s['loss']}")
            k = max(1, len(losses) // 10)
            tl = f"{np.mean(losses[:k]):.4f} → {np.mean(losses[-k:]):.4f}" if losses else "–"
            ev = " → ".join(f"{e['eval_loss']:.4f}" for e in records(r["metrics"], "eval"))
            summ = records(r["metrics"], "summary")
            bpp = summ[0].get("w_bytes_per_param", "–") if summ else "–"
            rk = rank_summary(r["rank_json"])
            err = rank_summary(r.get("err_json", ""))
            floor_meas = floor_pred = above = None
            if err and rk:
                # per layer: σ₁(E) and #{σ_i(ΔW) > σ₁(E)}, then averaged
                fm, ab = [], []
                for n, sig in rk["sigma"].items():
                    f = err["sigma_max"].get(n)
                    if f is None:
                        continue
                    fm.append(f)
                    ab.append(sum(1 for s in sig if s > f))
                floor_meas = float(np.mean(fm)) if fm else None
                above = float(np.mean(ab)) if ab else None
            if policy == "bf16-sr" and Wf and W is not None:
                floor_pred = float(np.mean([sr_floor(W[n], Wf[n] - W0[n], steps) for n in names]))
            lines.append("| " + " | ".join([
                model, str(lr), policy, str(bpp), fmt(rel) if policy != "fp32-master" else "0 (reference)", tl, ev or "–",
                fmt(dW), fmt(rk["entropy"], 1) if rk else "–", fmt(rk["stable"], 2) if rk else "–",
                fmt(rk["numerical"], 1) if rk else "–", fmt(floor_meas), fmt(floor_pred),
                fmt(above, 1) if above is not None else "–"]) + " |")
    lines.append("")
    lines.append("Columns. `rel_err`: the policy's final W against fp32-master's, relative to fp32-master's own update "
                 "(0 = identical; 1 = an error as large as the whole update). Ranks are per-layer means over every "
                 "target of ΔW_policy = W_final − W_0 (hdpissa-rank-analysis). `σ₁ floor measured`: mean over layers "
                 "of σ₁(W_policy − W_fp32), the spectral norm of everything the policy changed relative to fp32 "
                 "(rounding noise plus the drift it caused); `rank > floor`: mean number of singular values of "
                 "ΔW_policy above that floor. `SR floor predicted`: the spectral norm of T steps of independent "
                 "stochastic-rounding errors: per element and step mean 0 and variance u·|Δ_t| − Δ_t² (u the bf16 "
                 "spacing at |w|), ≈ u·|ΔW_fp32| accumulated when the steps keep their sign (a lower estimate "
                 "otherwise), capped at T·u²/4, times (√out + √in). bf16-compensated: the stored W omits its "
                 "compensation c (|c| ≤ half a bf16 spacing), which is part of its rel_err at small lr.")
    lines.append("")
    lines.append("Noise floor of hdpissa-rank-analysis. Its own `noise_floor` assumes the storage rounding of a "
                 "checkpoint written once (u·rms(W)·(√out+√in)/√3, u of the file's dtype: 2⁻²⁴ for the F32 files "
                 "written here). Under bf16-sr the stored W carries T accumulated rounding errors of bf16 size, "
                 "a full-rank random matrix whose spectrum is flat up to the floor above; singular values of ΔW "
                 "below it (and the numerical rank at τ σ₁ below it) count noise, not update directions. Read "
                 "`rank > floor`, not the numerical rank, for the bf16 policies.")
    with open(out_md, "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(os.path.dirname(out_md), "w-precision-loss-curves.csv"), "w") as f:
        f.write("\n".join(csv) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "round-bf16":
        cmd_round(sys.argv[2], sys.argv[3])
    elif len(sys.argv) in (3, 4) and sys.argv[1] == "collect":
        cmd_collect(sys.argv[2], sys.argv[3] if len(sys.argv) == 4 else "")
    elif len(sys.argv) == 4 and sys.argv[1] == "report":
        cmd_report(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
