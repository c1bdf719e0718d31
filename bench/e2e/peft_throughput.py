#!/usr/bin/env python3
"""PEFT / PyTorch side of the side-by-side throughput benchmark (docs/throughput.md).

Trains the given HF checkpoint (bf16 safetensors) on exactly the token ids that `hdpissa-eval
--tokens-only --micro-batch 2 --max-len 512` wrote (every micro-batch 2 x 512, no padding) and
measures steady-state training throughput:

  lora   PEFT LoRA, r / alpha as given (default 16 / 16: scaling 1), targets q,k,v,o,gate,up,down,
         dropout 0, init_lora_weights=True
  pissa  the same with init_lora_weights="pissa_niter_4" (PEFT's fast-SVD PiSSA init; its time is
         reported as init_s, outside the timed steps)
  full   full fine-tuning of every parameter
  lora-bf16  LoRA with the adapters in bf16 too (get_peft_model(autocast_adapter_dtype=False)) and
         no autocast: PEFT's leanest LoRA setting, in case it is faster than the default

Precision, as with the HF Trainer's bf16=True on a model loaded in bf16: base weights bf16, PEFT's
adapters in fp32 (get_peft_model's default autocast_adapter_dtype=True), forward under
torch.autocast(bfloat16); full fine-tuning updates the bf16 weights in place (pure bf16, no fp32
master). Attention: SDPA (is_causal fast path: no padding, no mask). Optimizer: torch AdamW
(fused=True), betas (0.9, 0.999), eps 1e-8, weight decay 0, constant lr. No gradient checkpointing.

One optimizer step = --grad-accum micro-batches (loss = mean over each micro-batch's targets /
grad_accum, as HF does). --warmup steps are run and discarded, then --steps steps are timed between
torch.cuda.synchronize() calls: tokens/s = steps * grad_accum * 2 * 512 / seconds, counting every
input token as the trainer's tokens_per_s does. Peak memory: torch.cuda.max_memory_allocated and
max_memory_reserved over the method's whole run (model load included), reset between methods.

MFU = tokens/s * FLOPs per token / measured bf16 peak. FLOPs per token = 4N for the adapter methods
(forward 2N + input gradients 2N; adapter FLOPs are < 1 % and not counted), 6N for full fine-tuning
(+ weight gradients 2N), with N = the parameters of the matrix multiplies (every nn.Linear of the
base model including lm_head; the embedding lookup does no FLOPs), attention scores and softmax not
counted: a conservative MFU. The peak is measured in the same process (--peak): a 8192^3 bf16
torch.matmul on random data, 3 warm-ups, median of 10 timed with CUDA events.

Each method appends one JSON line to --out. usage:
  peft_throughput.py --model DIR --batches TOKENS.json --methods lora,pissa,full --out peft.jsonl [--peak]
"""
import argparse
import gc
import json
import math
import statistics
import sys
import time

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def measure_bf16_peak(torch, n=8192, warmup=3, reps=10):
    g = torch.Generator(device="cuda").manual_seed(1)
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16, generator=g)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16, generator=g)
    for _ in range(warmup):
        torch.matmul(a, b)
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        c = torch.matmul(a, b)
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    if not torch.isfinite(c[:4, :4].float()).all():
        raise RuntimeError("bf16 peak matmul produced non-finite values")
    del a, b, c
    return 2.0 * n ** 3 / statistics.median(times) / 1e12


def load_batches(torch, path, want_len):
    ev = json.load(open(path))
    out = []
    for i, b in enumerate(ev["batches"]):
        if any(l != want_len for l in b["lengths"]) or any(len(r) != want_len for r in b["input_ids"]):
            sys.exit(f"peft_throughput.py: {path}: batch {i}: expected every row {want_len} tokens long (no padding), "
                     f"found lengths {b['lengths']}")
        out.append((torch.tensor(b["input_ids"], dtype=torch.long).cuda(),
                    torch.tensor(b["labels"], dtype=torch.long).cuda()))
    if not out:
        sys.exit(f"peft_throughput.py: {path}: expected batches, found none")
    return out, ev


def run_method(torch, a, method, batches, peak_tflops):
    import peft
    from transformers import AutoModelForCausalLM

    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.bfloat16, attn_implementation="sdpa")
    model.config.use_cache = False
    model.to("cuda")
    n_linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    n_total = sum(p.numel() for p in model.parameters())
    torch.cuda.synchronize()
    load_s = time.time() - t0
    init_s = 0.0
    autocast = method != "lora-bf16"
    if method in ("lora", "pissa", "lora-bf16"):
        cfg = peft.LoraConfig(r=a.rank, lora_alpha=a.alpha, lora_dropout=0.0, bias="none", target_modules=TARGETS,
                              task_type="CAUSAL_LM",
                              init_lora_weights="pissa_niter_4" if method == "pissa" else True)
        t1 = time.time()
        model = peft.get_peft_model(model, cfg, autocast_adapter_dtype=autocast)
        torch.cuda.synchronize()
        init_s = time.time() - t1
        lr = a.lr
    elif method == "full":
        lr = a.lr_full
    else:
        sys.exit(f"peft_throughput.py: unknown method '{method}': expected lora, pissa, lora-bf16 or full")
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, fused=True)
    tokens_per_step = a.grad_accum * batches[0][0].numel()
    step_s, losses, k = [], [], 0
    for step in range(a.warmup + a.steps):
        torch.cuda.synchronize()
        ts = time.perf_counter()
        loss_sum = 0.0
        for _ in range(a.grad_accum):
            ids, labels = batches[k % len(batches)]
            k += 1
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                out = model(input_ids=ids, labels=labels)
            (out.loss / a.grad_accum).backward()
            loss_sum += out.loss.detach()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        dt = time.perf_counter() - ts
        losses.append(float(loss_sum) / a.grad_accum)
        if step >= a.warmup:
            step_s.append(dt)
        print(f"  peft {method} step {step + 1}/{a.warmup + a.steps}: loss {losses[-1]:.4f}, {dt:.3f} s"
              + ("  (warm-up)" if step < a.warmup else ""), flush=True)
    if not all(math.isfinite(x) for x in losses):
        raise RuntimeError(f"{method}: non-finite loss {losses}")
    tps = tokens_per_step * len(step_s) / sum(step_s)
    flops_tok = (6 if method == "full" else 4) * n_linear
    rec = {
        "side": "peft", "method": method, "config": f"peft-{method}", "tokens_per_s": tps,
        "step_s_median": statistics.median(step_s), "step_s_mean": sum(step_s) / len(step_s),
        "tokens_per_step": tokens_per_step, "timed_steps": len(step_s), "warmup_steps": a.warmup,
        "peak_alloc_bytes": torch.cuda.max_memory_allocated(), "peak_reserved_bytes": torch.cuda.max_memory_reserved(),
        "flops_per_token": flops_tok, "n_linear": n_linear, "n_total": n_total, "n_trainable": n_trainable,
        "mfu": (tps * flops_tok / (peak_tflops * 1e12)) if peak_tflops else None, "peak_tflops": peak_tflops,
        "load_s": load_s, "init_s": init_s, "loss_first": losses[0], "loss_last": losses[-1],
        "rank": a.rank if method != "full" else None, "alpha": a.alpha if method != "full" else None,
        "grad_accum": a.grad_accum, "micro_batch": int(batches[0][0].shape[0]), "seq_len": int(batches[0][0].shape[1]),
        "precision": {"full": "pure bf16 weights + AdamW", "lora-bf16": "bf16 base and adapters, no autocast"}.get(
            method, "bf16 base, fp32 adapters, autocast bf16"),
        "versions": {"torch": torch.__version__, "peft": peft.__version__,
                     "transformers": __import__("transformers").__version__},
        "gpu": torch.cuda.get_device_name(0),
    }
    del model, opt, params
    gc.collect()
    torch.cuda.empty_cache()
    return rec


def main():
    ap = argparse.ArgumentParser(description="PEFT side of the throughput benchmark")
    ap.add_argument("--model", required=True)
    ap.add_argument("--batches", required=True, help="hdpissa-eval --tokens-only --json output (micro-batch 2)")
    ap.add_argument("--methods", default="lora,pissa,full")
    ap.add_argument("--out", required=True, help="JSONL to append one record per method to")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--lr-full", type=float, default=1e-5)
    ap.add_argument("--grad-accum", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--peak", action="store_true", help="measure the bf16 matmul peak first (for MFU)")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="use this bf16 peak instead of measuring")
    a = ap.parse_args()
    import torch
    if not torch.cuda.is_available():
        print("peft_throughput.py: SKIP: no CUDA device", file=sys.stderr)
        return 77
    torch.manual_seed(0)
    peak = a.peak_tflops
    if a.peak:
        peak = measure_bf16_peak(torch)
        print(f"bf16 matmul peak (8192^3, median of 10): {peak:.1f} TFLOP/s on {torch.cuda.get_device_name(0)}")
        with open(a.out, "a") as f:
            f.write(json.dumps({"side": "device", "config": "bf16-peak", "peak_tflops": peak,
                                "gpu": torch.cuda.get_device_name(0)}) + "\n")
    batches, _ = load_batches(torch, a.batches, a.seq_len)
    need = (a.warmup + a.steps) * a.grad_accum
    if len(batches) < need:
        print(f"peft_throughput.py: note: {len(batches)} micro-batches for {need} needed; they are reused")
    status = 0
    for m in [x for x in a.methods.split(",") if x]:
        try:
            rec = run_method(torch, a, m, batches, peak)
        except Exception as e:  # one method failing must not lose the others' numbers
            print(f"peft_throughput.py: {m} FAILED: {type(e).__name__}: {e}", file=sys.stderr)
            rec = {"side": "peft", "method": m, "config": f"peft-{m}", "error": f"{type(e).__name__}: {e}"}
            status = 1
            gc.collect()
            torch.cuda.empty_cache()
        else:
            mfu = f", MFU {100 * rec['mfu']:.1f} %" if rec["mfu"] else ""
            print(f"peft {m}: {rec['tokens_per_s']:.0f} tok/s, step {rec['step_s_median']:.3f} s, "
                  f"peak alloc {rec['peak_alloc_bytes'] / 2**30:.2f} GiB, "
                  f"reserved {rec['peak_reserved_bytes'] / 2**30:.2f} GiB{mfu}", flush=True)
        with open(a.out, "a") as f:
            f.write(json.dumps(rec) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
