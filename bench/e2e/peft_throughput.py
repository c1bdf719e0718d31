#!/usr/bin/env python3
"""PEFT / PyTorch side of the side-by-side throughput benchmark (docs/throughput.md).

Trains the given HF checkpoint (bf16 safetensors) on exactly the token ids that `hdpissa-eval
--tokens-only --micro-batch 2 --max-len 512` wrote (every micro-batch 2 x 512, no padding) and
measures steady-state training throughput and peak GPU memory.

Methods: a base method followed by optional modifiers, joined by "-" (any order after the base):

  lora     PEFT LoRA, r / alpha as given (default 16 / 16: scaling 1), targets q,k,v,o,gate,up,down,
           dropout 0, init_lora_weights=True
  pissa    the same with init_lora_weights="pissa_niter_4" (PEFT's fast-SVD PiSSA init; its time is
           reported as init_s, outside the timed steps)
  full     full fine-tuning of every parameter (pure bf16 weights and AdamW states, no fp32 master)

  -bf16    adapters in bf16 too (get_peft_model(autocast_adapter_dtype=False)) and no autocast:
           PEFT's leanest setting. Without it: PEFT's default, fp32 adapters and the forward under
           torch.autocast(bfloat16), as the HF Trainer's bf16=True on a model loaded in bf16.
  -compile torch.compile of the PEFT model (in place, nn.Module.compile; --compile-target inner
           compiles the wrapped transformers model instead), mode --compile-mode (default "default"),
           dynamic=False (every micro-batch has the same shape).
  -cg      -compile with mode="reduce-overhead" (CUDA graphs through cudagraph trees).

  e.g. lora, lora-bf16 (leanest eager), lora-compile, lora-bf16-compile, pissa-compile,
  lora-bf16-cg, full-compile.

Common to all: attention SDPA (attn_implementation="sdpa"; is_causal fast path: no padding, no
mask), torch.optim.AdamW(fused=True), betas (0.9, 0.999), eps 1e-8, weight decay 0, constant lr,
use_cache False, no gradient checkpointing (--grad-ckpt turns it on, non-reentrant).

Micro-batch: the batches file holds micro-batches of 2 rows. --micro-batch M (a multiple of the
file's micro-batch) concatenates consecutive rows: micro-batch 8 = 4 consecutive file batches of 2
in one tensor (the same ids, regrouped; no new data). One optimizer step = --grad-accum
micro-batches (loss = mean over each micro-batch's targets / grad_accum, as HF does), so tokens per
optimizer step = M x 512 x grad_accum (2 x 512 x 8 = 8 x 512 x 2 = 8192).

Timing: --warmup steps are run and discarded, then --steps steps are timed between
torch.cuda.synchronize() calls: tokens/s = steps * grad_accum * M * 512 / seconds, counting every
input token as the trainer's tokens_per_s does. For compiled methods the first warm-up step holds
the compilation (its first micro-batch traces and compiles forward and backward); it is reported as
first_step_s and compile_s = first_step_s - median timed step, never in tokens/s. Dynamo's graph
count and graph-break count are reported (a recompilation during the timed steps shows up as
recompiles_timed > 0).

Peak memory, per method (run one method per process for clean numbers; the driver does):
torch.cuda.max_memory_allocated / max_memory_reserved over the method's whole run (model load,
init, compilation included; reset at its start) -> peak_alloc_bytes / peak_reserved_bytes; the same
over the timed steps only (reset after the warm-up) -> *_timed_bytes; and peak_device_bytes = the
largest (total - free) of torch.cuda.mem_get_info() sampled after load, after init and after every
step: device-wide like our trainer's peak_device_bytes (CUDA context and library workspaces
included; only meaningful when no other process uses the GPU).

MFU = tokens/s * FLOPs per token / measured bf16 peak. FLOPs per token = 4N for the adapter methods
(forward 2N + input gradients 2N; adapter FLOPs are < 1 % and not counted), 6N for full fine-tuning
(+ weight gradients 2N), with N = the parameters of the matrix multiplies (every nn.Linear of the
base model including lm_head; the embedding lookup does no FLOPs), attention scores and softmax not
counted: a conservative MFU. The peak is measured in the same process (--peak): a 8192^3 bf16
torch.matmul on random data, 3 warm-ups, median of 10 timed with CUDA events; --peak-only measures
it, appends it to --out and exits.

Each method appends one JSON line to --out (an "error" record if it fails). usage:
  peft_throughput.py --model DIR --batches TOKENS.json --methods lora-bf16,lora-compile \\
      --micro-batch 8 --grad-accum 2 --out peft.jsonl [--peak]
  peft_throughput.py --peak-only --out device.jsonl
"""
import argparse
import gc
import json
import math
import os
import statistics
import sys
import time

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BASES = ("lora", "pissa", "full")
MODIFIERS = ("bf16", "compile", "cg")


def parse_method(name):
    """'lora-bf16-compile' -> {'base': 'lora', 'bf16': True, 'compile': True, 'cg': False}."""
    parts = name.split("-")
    if parts[0] not in BASES:
        raise ValueError(f"unknown method '{name}': expected one of {'/'.join(BASES)} followed by optional "
                         f"-{' -'.join(MODIFIERS)}")
    spec = {"base": parts[0], "bf16": False, "compile": False, "cg": False}
    for p in parts[1:]:
        if p not in MODIFIERS:
            raise ValueError(f"unknown modifier '{p}' in method '{name}': expected one of {', '.join(MODIFIERS)}")
        spec[p] = True
    if spec["cg"]:
        spec["compile"] = True
    return spec


def regroup(rows_ids, rows_labels, micro_batch):
    """Consecutive rows -> micro-batches of micro_batch rows (rows that do not fill one are dropped)."""
    n = len(rows_ids) // micro_batch
    return [(rows_ids[i * micro_batch:(i + 1) * micro_batch], rows_labels[i * micro_batch:(i + 1) * micro_batch])
            for i in range(n)]


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


def load_batches(torch, path, want_len, micro_batch):
    ev = json.load(open(path))
    ids, labels, file_mb = [], [], None
    for i, b in enumerate(ev["batches"]):
        if any(l != want_len for l in b["lengths"]) or any(len(r) != want_len for r in b["input_ids"]):
            sys.exit(f"peft_throughput.py: {path}: batch {i}: expected every row {want_len} tokens long (no padding), "
                     f"found lengths {b['lengths']}")
        file_mb = file_mb or len(b["input_ids"])
        ids += b["input_ids"]
        labels += b["labels"]
    if not ids:
        sys.exit(f"peft_throughput.py: {path}: expected batches, found none")
    mb = micro_batch or file_mb
    if mb % file_mb:
        sys.exit(f"peft_throughput.py: --micro-batch {mb}: expected a multiple of the file's micro-batch {file_mb}")
    groups = regroup(ids, labels, mb)
    if not groups:
        sys.exit(f"peft_throughput.py: {path}: {len(ids)} rows, fewer than one micro-batch of {mb}")
    out = [(torch.tensor(i, dtype=torch.long).cuda(), torch.tensor(l, dtype=torch.long).cuda()) for i, l in groups]
    return out, file_mb


def device_used(torch):
    free, total = torch.cuda.mem_get_info()
    return total - free


def dynamo_counts(torch):
    try:
        from torch._dynamo.utils import counters
        return (int(counters["stats"].get("unique_graphs", 0)),
                int(sum(counters["graph_break"].values())))
    except Exception:
        return (None, None)


def load_model(torch, path):
    from transformers import AutoModelForCausalLM
    try:  # straight onto the GPU (no host copy of the weights) when this transformers can
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, attn_implementation="sdpa",
                                                     device_map="cuda")
        how = "device_map=cuda"
    except Exception as e:  # e.g. device_map support missing: the host path
        print(f"  (device_map='cuda' load failed: {type(e).__name__}: {e}; loading on the host)", flush=True)
        gc.collect()
        torch.cuda.empty_cache()
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, attn_implementation="sdpa")
        model.to("cuda")
        how = "host, then .to(cuda)"
    model.config.use_cache = False
    return model, how


def run_method(torch, a, method, batches, peak_tflops):
    import peft

    spec = parse_method(method)
    base = spec["base"]
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    dev_peak = device_used(torch)
    t0 = time.time()
    model, load_how = load_model(torch, a.model)
    n_linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    n_total = sum(p.numel() for p in model.parameters())
    torch.cuda.synchronize()
    load_s = time.time() - t0
    dev_peak = max(dev_peak, device_used(torch))
    init_s = 0.0
    autocast = base != "full" and not spec["bf16"]
    if base in ("lora", "pissa"):
        cfg = peft.LoraConfig(r=a.rank, lora_alpha=a.alpha, lora_dropout=0.0, bias="none", target_modules=TARGETS,
                              task_type="CAUSAL_LM",
                              init_lora_weights="pissa_niter_4" if base == "pissa" else True)
        t1 = time.time()
        model = peft.get_peft_model(model, cfg, autocast_adapter_dtype=not spec["bf16"])
        torch.cuda.synchronize()
        init_s = time.time() - t1
        lr = a.lr
    else:
        lr = a.lr_full
    if a.grad_ckpt:
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    adapter_dtype = str(next((p.dtype for n, p in model.named_parameters() if "lora_" in n), params[0].dtype))
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, fused=True)
    dev_peak = max(dev_peak, device_used(torch))
    mode = None
    if spec["compile"]:
        mode = "reduce-overhead" if spec["cg"] else a.compile_mode
        target = model.get_base_model() if (a.compile_target == "inner" and base != "full") else model
        target.compile(mode=mode, dynamic=False)  # in place: PEFT's wrappers keep calling the same module
    fwd = model
    graphs0, breaks0 = dynamo_counts(torch)
    tokens_per_step = a.grad_accum * batches[0][0].numel()
    step_s, losses, k = [], [], 0
    first_step_s, graphs_warm = None, None
    for step in range(a.warmup + a.steps):
        if step == a.warmup:  # timed steps: peak over them alone, and count recompilations
            torch.cuda.synchronize()
            peak_alloc_run = torch.cuda.max_memory_allocated()
            peak_reserved_run = torch.cuda.max_memory_reserved()
            torch.cuda.reset_peak_memory_stats()
            graphs_warm, _ = dynamo_counts(torch)
        torch.cuda.synchronize()
        ts = time.perf_counter()
        loss_sum = 0.0
        for _ in range(a.grad_accum):
            ids, labels = batches[k % len(batches)]
            k += 1
            if spec["cg"]:
                torch.compiler.cudagraph_mark_step_begin()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                out = fwd(input_ids=ids, labels=labels)
            loss = out.loss
            (loss / a.grad_accum).backward()
            loss_sum = loss_sum + loss.detach().float()
            del out, loss
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        dt = time.perf_counter() - ts
        dev_peak = max(dev_peak, device_used(torch))
        losses.append(float(loss_sum) / a.grad_accum)
        if step == 0:
            first_step_s = dt
        if step >= a.warmup:
            step_s.append(dt)
        print(f"  peft {method} step {step + 1}/{a.warmup + a.steps}: loss {losses[-1]:.4f}, {dt:.3f} s"
              + ("  (warm-up" + (", compiles" if spec["compile"] and step == 0 else "") + ")" if step < a.warmup else ""),
              flush=True)
    if not all(math.isfinite(x) for x in losses):
        raise RuntimeError(f"{method}: non-finite loss {losses}")
    if not step_s:
        raise RuntimeError(f"{method}: no timed steps (--steps {a.steps})")
    peak_alloc_timed = torch.cuda.max_memory_allocated()
    peak_reserved_timed = torch.cuda.max_memory_reserved()
    graphs1, breaks1 = dynamo_counts(torch)
    tps = tokens_per_step * len(step_s) / sum(step_s)
    med = statistics.median(step_s)
    flops_tok = (6 if base == "full" else 4) * n_linear
    rec = {
        "side": "peft", "method": method, "base_method": base, "config": f"peft-{method}", "tokens_per_s": tps,
        "step_s_median": med, "step_s_mean": sum(step_s) / len(step_s), "step_s": step_s,
        "tokens_per_step": tokens_per_step, "timed_steps": len(step_s), "warmup_steps": a.warmup,
        "first_step_s": first_step_s,
        "compile": spec["compile"], "compile_mode": mode,
        "compile_target": (a.compile_target if spec["compile"] else None),
        "compile_s": max(0.0, first_step_s - med) if spec["compile"] else None,
        "dynamo_graphs": (graphs1 - graphs0) if graphs1 is not None and graphs0 is not None else None,
        "graph_breaks": (breaks1 - breaks0) if breaks1 is not None and breaks0 is not None else None,
        "recompiles_timed": (graphs1 - graphs_warm) if graphs1 is not None and graphs_warm is not None else None,
        "peak_alloc_bytes": max(peak_alloc_run, peak_alloc_timed),
        "peak_reserved_bytes": max(peak_reserved_run, peak_reserved_timed),
        "peak_alloc_timed_bytes": peak_alloc_timed, "peak_reserved_timed_bytes": peak_reserved_timed,
        "peak_device_bytes": dev_peak,
        "flops_per_token": flops_tok, "n_linear": n_linear, "n_total": n_total, "n_trainable": n_trainable,
        "mfu": (tps * flops_tok / (peak_tflops * 1e12)) if peak_tflops else None, "peak_tflops": peak_tflops,
        "load_s": load_s, "load": load_how, "init_s": init_s, "loss_first": losses[0], "loss_last": losses[-1],
        "rank": a.rank if base != "full" else None, "alpha": a.alpha if base != "full" else None,
        "grad_accum": a.grad_accum, "micro_batch": int(batches[0][0].shape[0]), "seq_len": int(batches[0][0].shape[1]),
        "grad_ckpt": bool(a.grad_ckpt), "adapter_dtype": adapter_dtype if base != "full" else None,
        "precision": ("pure bf16 weights + AdamW" if base == "full" else
                      "bf16 base and adapters, no autocast" if spec["bf16"] else
                      "bf16 base, fp32 adapters, autocast bf16"),
        "versions": {"torch": torch.__version__, "peft": peft.__version__,
                     "transformers": __import__("transformers").__version__},
        "gpu": torch.cuda.get_device_name(0),
    }
    del model, opt, params, fwd
    gc.collect()
    torch.cuda.empty_cache()
    return rec


def main():
    ap = argparse.ArgumentParser(description="PEFT side of the throughput benchmark")
    ap.add_argument("--model")
    ap.add_argument("--batches", help="hdpissa-eval --tokens-only --json output (micro-batch 2)")
    ap.add_argument("--methods", default="lora,pissa,full",
                    help="comma-separated: lora|pissa|full, each optionally -bf16, -compile, -cg")
    ap.add_argument("--out", required=True, help="JSONL to append one record per method to")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--lr-full", type=float, default=1e-5)
    ap.add_argument("--micro-batch", type=int, default=0,
                    help="rows per micro-batch; a multiple of the file's (consecutive rows concatenated); "
                         "0 = the file's")
    ap.add_argument("--grad-accum", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--warmup", type=int, default=2, help="discarded steps (the first holds any compilation)")
    ap.add_argument("--steps", type=int, default=4, help="timed steps")
    ap.add_argument("--compile-mode", default="default",
                    help="torch.compile mode for -compile methods (default, max-autotune-no-cudagraphs, ...)")
    ap.add_argument("--compile-target", choices=("peft", "inner"), default="peft",
                    help="compile the PEFT model (peft) or the transformers model inside it (inner)")
    ap.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing (off by default, as ours)")
    ap.add_argument("--peak", action="store_true", help="measure the bf16 matmul peak first (for MFU)")
    ap.add_argument("--peak-only", action="store_true", help="measure the bf16 matmul peak, append it, exit")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="use this bf16 peak instead of measuring")
    ap.add_argument("--tag", default="", help="free text stored in every record (e.g. the model shape)")
    a = ap.parse_args()
    methods = [x for x in a.methods.split(",") if x]
    for m in methods:  # fail on a typo before loading anything
        try:
            parse_method(m)
        except ValueError as e:
            sys.exit(f"peft_throughput.py: {e}")
    if not a.peak_only and not (a.model and a.batches):
        sys.exit("peft_throughput.py: expected --model and --batches (or --peak-only)")
    import torch
    if not torch.cuda.is_available():
        print("peft_throughput.py: SKIP: no CUDA device", file=sys.stderr)
        return 77
    torch.manual_seed(0)
    peak = a.peak_tflops
    if a.peak or a.peak_only:
        peak = measure_bf16_peak(torch)
        print(f"bf16 matmul peak (8192^3, median of 10): {peak:.1f} TFLOP/s on {torch.cuda.get_device_name(0)}")
        with open(a.out, "a") as f:
            f.write(json.dumps({"side": "device", "config": "bf16-peak", "peak_tflops": peak,
                                "gpu": torch.cuda.get_device_name(0),
                                "versions": {"torch": torch.__version__}}) + "\n")
        gc.collect()
        torch.cuda.empty_cache()
    if a.peak_only or not methods:
        return 0
    batches, file_mb = load_batches(torch, a.batches, a.seq_len, a.micro_batch)
    need = (a.warmup + a.steps) * a.grad_accum
    print(f"peft_throughput.py: {len(batches)} micro-batches of {batches[0][0].shape[0]} x {a.seq_len} "
          f"(file micro-batch {file_mb}), grad-accum {a.grad_accum}, {a.warmup} warm-up + {a.steps} timed steps"
          + (f"; {need} micro-batches needed: they are reused" if len(batches) < need else ""), flush=True)
    status = 0
    for m in methods:
        try:
            rec = run_method(torch, a, m, batches, peak)
        except Exception as e:  # one method failing must not lose the others' numbers
            print(f"peft_throughput.py: {m} FAILED: {type(e).__name__}: {str(e)[:2000]}", file=sys.stderr)
            rec = {"side": "peft", "method": m, "config": f"peft-{m}", "error": f"{type(e).__name__}: {str(e)[:500]}",
                   "micro_batch": a.micro_batch or file_mb, "grad_accum": a.grad_accum}
            status = 1
            gc.collect()
            torch.cuda.empty_cache()
        else:
            mfu = f", MFU {100 * rec['mfu']:.1f} %" if rec["mfu"] else ""
            comp = (f", compile {rec['compile_s']:.1f} s ({rec['dynamo_graphs']} graphs, {rec['graph_breaks']} breaks, "
                    f"{rec['recompiles_timed']} recompiles in the timed steps)") if rec["compile"] else ""
            print(f"peft {m}: {rec['tokens_per_s']:.0f} tok/s, step {rec['step_s_median']:.3f} s, "
                  f"peak alloc {rec['peak_alloc_bytes'] / 2**30:.2f} GiB, "
                  f"reserved {rec['peak_reserved_bytes'] / 2**30:.2f} GiB, "
                  f"device {rec['peak_device_bytes'] / 2**30:.2f} GiB{mfu}{comp}", flush=True)
        if a.tag:
            rec["tag"] = a.tag
        with open(a.out, "a") as f:
            f.write(json.dumps(rec) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
