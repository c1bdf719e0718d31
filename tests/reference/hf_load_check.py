#!/usr/bin/env python3
"""Does our saved HF checkpoint load in transformers, and does transformers compute our loss?

Input: a checkpoint directory (config.json + model.safetensors, as hdpissa-train --output writes it)
and the JSON that `hdpissa-eval --json` wrote for it: our held-out loss and the exact right-padded
batches (input_ids, labels with -100 on prompt and padding, lengths) it was computed on.

The check loads the checkpoint with transformers' AutoModelForCausalLM in float32 and computes the
token-mean cross-entropy on exactly those batches: HF's shift (position t predicts labels[t+1]),
-100 ignored, padding masked with attention_mask = (t < length). It passes when

    |loss_transformers - loss_ours| <= rtol * |loss_ours|        (rtol 1e-4 by default)

and the number of target tokens is the same. It also asks transformers for its own `labels=` loss
per batch and checks it equals the batch mean computed here, so the shift convention is transformers'
own and not ours copied.

--backend plain instead runs tests/reference/llama_ref.py's independent float64 PyTorch model (no
transformers): that is how CI, which has torch but no transformers, exercises this script.

usage: hf_load_check.py --model DIR --eval-json FILE [--backend transformers|plain] [--rtol 1e-4]
                        [--device cpu|cuda] [--out RESULT.json]
exit: 0 match, 1 mismatch, 2 bad input, 77 backend not installed (CTest SKIP_RETURN_CODE).
"""
import argparse
import json
import math
import os
import sys
import time


def fail_input(msg):
    print(f"hf_load_check.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="HF checkpoint directory")
    ap.add_argument("--eval-json", required=True, help="hdpissa-eval --json output for this checkpoint")
    ap.add_argument("--backend", choices=["transformers", "plain"], default="transformers")
    ap.add_argument("--rtol", type=float, default=1e-4)
    ap.add_argument("--device", default="cpu", help="torch device for the transformers model (default cpu)")
    ap.add_argument("--out", help="write the comparison as JSON here")
    a = ap.parse_args()

    try:
        import torch
    except ImportError as e:
        print(f"hf_load_check.py: SKIP: torch unavailable ({e})", file=sys.stderr)
        return 77
    if not os.path.isfile(os.path.join(a.model, "config.json")):
        fail_input(f"expected an HF checkpoint directory with config.json at '{a.model}', not found")
    try:
        ev = json.load(open(a.eval_json))
    except (OSError, ValueError) as e:
        fail_input(f"expected hdpissa-eval JSON at '{a.eval_json}': {e}")
    for key in ("loss", "n_tokens", "batches"):
        if key not in ev:
            fail_input(f"'{a.eval_json}': expected key '{key}' (written by hdpissa-eval without --tokens-only), "
                       f"found keys {sorted(ev)}")

    t0 = time.time()
    if a.backend == "transformers":
        try:
            import transformers
            from transformers import AutoModelForCausalLM
        except ImportError as e:
            print(f"hf_load_check.py: SKIP: transformers unavailable ({e})", file=sys.stderr)
            return 77
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="eager")
        model.to(a.device).eval()
        what = f"transformers {transformers.__version__} {type(model).__name__} (fp32, eager attention, {a.device})"
        vocab = model.config.vocab_size

        def logits_and_hf_loss(ids, labels, lengths):
            T = ids.shape[1]
            mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
            out = model(input_ids=ids.to(a.device), attention_mask=mask.to(a.device), labels=labels.to(a.device))
            return out.logits.float().cpu(), float(out.loss)
    else:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import llama_ref
        cfg = json.load(open(os.path.join(a.model, "config.json")))
        st = os.path.join(a.model, "model.safetensors")
        if not os.path.isfile(st):
            fail_input(f"--backend plain reads a single model.safetensors, not found in '{a.model}'")
        P = llama_ref.read_safetensors(st)
        what = "tests/reference/llama_ref.py plain PyTorch model (float64, no transformers)"
        vocab = cfg["vocab_size"]

        def logits_and_hf_loss(ids, labels, lengths):
            with torch.no_grad():
                return llama_ref.forward(cfg, P, ids, lengths), None
    load_s = time.time() - t0

    loss_sum, n_tokens, max_hf_dev = 0.0, 0, 0.0
    with torch.no_grad():
        for i, b in enumerate(ev["batches"]):
            ids = torch.tensor(b["input_ids"], dtype=torch.long)
            labels = torch.tensor(b["labels"], dtype=torch.long)
            lengths = torch.tensor(b["lengths"], dtype=torch.long)
            if ids.dim() != 2 or ids.shape != labels.shape or lengths.shape != (ids.shape[0],):
                fail_input(f"batch {i}: expected input_ids and labels (B, T) and lengths (B), found "
                           f"{tuple(ids.shape)}, {tuple(labels.shape)}, {tuple(lengths.shape)}")
            if int(ids.max()) >= vocab or int(ids.min()) < 0:
                fail_input(f"batch {i}: expected token ids in [0, {vocab}), found [{int(ids.min())}, {int(ids.max())}]")
            logits, hf_loss = logits_and_hf_loss(ids, labels, lengths)
            V = logits.shape[-1]
            ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V).double(),
                                                   labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum")
            n = int((labels[:, 1:] != -100).sum())
            loss_sum += float(ce)
            n_tokens += n
            if hf_loss is not None and n > 0:  # transformers' own shift / ignore convention
                max_hf_dev = max(max_hf_dev, abs(hf_loss - float(ce) / n) / max(abs(float(ce) / n), 1e-30))

    ours = float(ev["loss"])
    theirs = loss_sum / n_tokens if n_tokens else float("nan")
    rel = abs(theirs - ours) / max(abs(ours), 1e-30)
    ok = (n_tokens == int(ev["n_tokens"])) and math.isfinite(theirs) and rel <= a.rtol and max_hf_dev <= a.rtol
    res = {
        "model": a.model, "backend": what, "batches": len(ev["batches"]), "n_tokens_ours": int(ev["n_tokens"]),
        "n_tokens_ref": n_tokens, "loss_ours": ours, "loss_ref": theirs, "rel_diff": rel, "rtol": a.rtol,
        "hf_labels_loss_max_rel_dev": max_hf_dev, "load_s": load_s, "pass": ok,
    }
    print(f"hf_load_check: {what}")
    print(f"hf_load_check: loaded {a.model} in {load_s:.1f} s; {len(ev['batches'])} batches, "
          f"{n_tokens} target tokens (ours {ev['n_tokens']})")
    print(f"hf_load_check: loss ours {ours:.8f}  reference {theirs:.8f}  |rel diff| {rel:.2e} (rtol {a.rtol:g})"
          + (f"; transformers' labels= loss vs ours per batch: max rel dev {max_hf_dev:.2e}"
             if a.backend == "transformers" else ""))
    print("hf_load_check: " + ("PASS" if ok else "FAIL"))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
