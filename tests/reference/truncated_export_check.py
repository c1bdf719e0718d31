#!/usr/bin/env python3
"""truncated_export_check.py — an independent check of hdpissa-train's ΔW → truncated LoRA export
(--export-lora-rank R / --export-lora-energy E; examples/llama/include/llama/train/lora_export.hpp).

For every target linear of the exported adapter:
  1. ΔW = W_final − W_base in float64, from the two HF checkpoints (the merged output and the base);
  2. torch.linalg.svd(ΔW) → the reference rank-R truncation (R = the adapter's rank for that layer,
     from rank_pattern / r) and its kept share Σ_{i<R} σ_i² / ‖ΔW‖²;
  3. PEFT loads the adapter on the base model and merges it (merge_and_unload): W_peft − W_base must
     equal the reference truncation (relative Frobenius error ≤ --rtol), and the kept share reported
     in lora_export.json must equal the reference's (abs ≤ 1e-5); for an energy export, R must be the
     smallest rank whose share reaches E.
Exit 0 when every layer passes, 1 otherwise, 77 when torch / peft are missing.
"""
import argparse
import json
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="base HF checkpoint (W_init)")
    ap.add_argument("--final", required=True, help="hdpissa-train's merged output (W_final)")
    ap.add_argument("--adapter", required=True, help="the exported PEFT adapter directory (with lora_export.json)")
    ap.add_argument("--rtol", type=float, default=2e-4)
    ap.add_argument("--out", help="write the per-layer comparison as JSON here")
    a = ap.parse_args()
    try:
        import torch
        from peft import PeftModel
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM
    except ImportError as e:
        print(f"truncated_export_check: SKIP ({e})")
        return 77
    import os

    def tensors(d):
        return load_file(os.path.join(d, "model.safetensors"))

    base, final = tensors(a.base), tensors(a.final)
    report = json.load(open(os.path.join(a.adapter, "lora_export.json")))
    energy = report.get("energy")
    model = AutoModelForCausalLM.from_pretrained(a.base, dtype=torch.float64)
    merged = PeftModel.from_pretrained(model, a.adapter).merge_and_unload()
    msd = merged.state_dict()
    rows, ok = [], True
    for layer in report["layers"]:
        key = layer["name"] + ".weight"   # e.g. model.layers.0.self_attn.q_proj
        Wb = base[key].to(torch.float64)
        dW = final[key].to(torch.float64) - Wb
        U, S, Vh = torch.linalg.svd(dW, full_matrices=False)
        R = int(layer["rank"])
        ref = (U[:, :R] * S[:R]) @ Vh[:R]
        tot = float((S ** 2).sum())
        share = float((S[:R] ** 2).sum()) / tot if tot > 0 else 1.0
        got = msd[key].to(torch.float64) - Wb
        err = float((got - ref).norm() / max(float(ref.norm()), 1e-30))
        row = {"layer": layer["name"], "rank": R, "rel_err": err, "kept_share_ours": layer["kept_share"],
               "kept_share_ref": share, "sigma_R": float(S[R - 1]), "sigma_R+1": float(S[R]) if R < len(S) else 0.0}
        bad = err > a.rtol or abs(share - layer["kept_share"]) > 1e-5
        if energy is not None:  # R is the smallest rank reaching the share
            cum = torch.cumsum(S ** 2, 0) / tot
            r_ref = int((cum < energy - 1e-12).sum()) + 1
            row["rank_ref"] = r_ref
            # a tie within float32 noise of the threshold may move R by one
            bad = bad or (R != r_ref and abs(float(cum[min(R, r_ref) - 1]) - energy) > 1e-5)
        row["pass"] = not bad
        ok = ok and not bad
        rows.append(row)
    worst = max(rows, key=lambda r: r["rel_err"])
    print(f"truncated_export_check: {len(rows)} layers, ranks {sorted({r['rank'] for r in rows})}, "
          f"worst rel err {worst['rel_err']:.2e} ({worst['layer']}), max |share diff| "
          f"{max(abs(r['kept_share_ours'] - r['kept_share_ref']) for r in rows):.1e}, "
          f"kept share total {report.get('kept_share_total'):.4f}")
    for r in rows:
        if not r["pass"]:
            print("  FAIL", r)
    if a.out:
        json.dump({"layers": rows, "pass": ok}, open(a.out, "w"), indent=1)
    print("truncated_export_check:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
