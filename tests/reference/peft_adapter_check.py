#!/usr/bin/env python3
"""TO BE RUN ON THE GPU MACHINE (needs torch, transformers and peft; CI has none of peft/transformers).

Does PEFT load our adapter, and does base + adapter compute our loss?

Input: the base checkpoint the adapter applies to, an adapter directory written by hdpissa-train
(adapter_config.json + adapter_model.safetensors: lora, pissa's converted rank-2r adapter,
pissa/ on pissa/residual_model, or the --export-lora-rank export of a DWU run), and the JSON that
`hdpissa-eval --json` wrote for OUR MERGED MODEL (its held-out loss and the exact right-padded
batches). The check loads AutoModelForCausalLM(base) in float32, wraps it with
PeftModel.from_pretrained(base, adapter) and computes the token-mean cross-entropy on those
batches (HF's shift, -100 ignored, attention_mask = t < length). It passes when

    |loss_peft - loss_ours| <= rtol * |loss_ours|        (rtol 1e-4 by default)

For a truncated export (--export-lora-rank R < full rank) the losses differ by the truncation;
pass --rtol accordingly, or compare against `hdpissa-eval` of a model merged with the same
truncation. Commands: docs/trainer.md, "Outputs".

usage: peft_adapter_check.py --base DIR --adapter DIR --eval-json FILE [--rtol 1e-4] [--device cuda]
exit: 0 match, 1 mismatch, 2 bad input, 77 torch / transformers / peft not installed.
"""
import argparse
import json
import math
import os
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[2])
    ap.add_argument("--base", required=True, help="HF checkpoint the adapter applies to")
    ap.add_argument("--adapter", required=True, help="PEFT adapter directory written by hdpissa-train")
    ap.add_argument("--eval-json", required=True, help="hdpissa-eval --json output for our merged model")
    ap.add_argument("--rtol", type=float, default=1e-4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--record", help="append {label, loss_ours, loss_peft, n_tokens, peft} as a JSON line here")
    ap.add_argument("--label", default="")
    a = ap.parse_args()
    try:
        import torch
        from transformers import AutoModelForCausalLM
        from peft import PeftModel
        import peft
    except ImportError as e:
        print(f"peft_adapter_check.py: SKIP: {e} (run this on the GPU machine)", file=sys.stderr)
        return 77
    for d, f in ((a.base, "config.json"), (a.adapter, "adapter_config.json"), (a.adapter, "adapter_model.safetensors")):
        if not os.path.isfile(os.path.join(d, f)):
            print(f"peft_adapter_check.py: error: expected {f} in '{d}', not found", file=sys.stderr)
            return 2
    ev = json.load(open(a.eval_json))
    torch.backends.cuda.matmul.allow_tf32 = False
    base = AutoModelForCausalLM.from_pretrained(a.base, dtype=torch.float32, attn_implementation="eager")
    model = PeftModel.from_pretrained(base, a.adapter).to(a.device).eval()
    n_lora = sum(1 for n, _ in model.named_parameters() if "lora_A" in n)
    loss_sum, n_tokens = 0.0, 0
    with torch.no_grad():
        for b in ev["batches"]:
            ids = torch.tensor(b["input_ids"], dtype=torch.long)
            labels = torch.tensor(b["labels"], dtype=torch.long)
            lengths = torch.tensor(b["lengths"], dtype=torch.long)
            mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
            logits = model(input_ids=ids.to(a.device), attention_mask=mask.to(a.device)).logits.float().cpu()
            V = logits.shape[-1]
            loss_sum += float(torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V).double(),
                                                                labels[:, 1:].reshape(-1), ignore_index=-100,
                                                                reduction="sum"))
            n_tokens += int((labels[:, 1:] != -100).sum())
    ours, theirs = float(ev["loss"]), loss_sum / max(n_tokens, 1)
    rel = abs(theirs - ours) / max(abs(ours), 1e-30)
    ok = n_tokens == int(ev["n_tokens"]) and math.isfinite(theirs) and rel <= a.rtol
    print(f"peft_adapter_check: peft {peft.__version__}: {a.adapter} on {a.base}: {n_lora} LoRA layers loaded")
    print(f"peft_adapter_check: loss ours (merged) {ours:.8f}  PeftModel {theirs:.8f}  |rel diff| {rel:.2e} "
          f"(rtol {a.rtol:g}); {n_tokens} target tokens (ours {ev['n_tokens']})")
    if a.record:
        with open(a.record, "a") as f:
            f.write(json.dumps({"label": a.label, "loss_ours": ours, "loss_peft": theirs, "n_tokens": n_tokens,
                                "peft": peft.__version__, "pass": ok}) + "\n")
    print("peft_adapter_check: " + ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
