#!/usr/bin/env python3
"""transformers' greedy generate() throughput, the peer of our GPU decoder (scripts/decode-bench.sh).

bf16 weights, static KV cache (generation_config.cache_implementation = "static"), greedy
(do_sample=False), one batch of the given prompts (token ids, left-padded with an attention mask as
transformers expects for batched generation), exactly --max-new-tokens new tokens per prompt
(min_new_tokens = max_new_tokens: no early stop, as our side runs with --no-stop).

Timing (CUDA-synchronised wall clock, after one warm-up generate of the same shape):
  prefill  = generate(max_new_tokens=1)             -> prefill tok/s = prompt tokens (unpadded) / time
  full     = generate(max_new_tokens=N)
  decode tok/s = B * (N - 1) / (full - prefill)      (the N - 1 tokens that come from decode steps)
  end-to-end tok/s = B * N / full
--compile additionally wraps the model's forward in torch.compile(mode="reduce-overhead") (the
static-cache recipe of the transformers docs); off by default (compilation takes minutes at 7B).

usage: hf_generate_bench.py --model DIR --prompts prompts.jsonl --max-new-tokens N --out result.json [--compile]
prompts.jsonl: one {"ids": [...]} per line (what decode-bench.sh also feeds to hdpissa-generate).
"""
import argparse
import json
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--max-new-tokens", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--repeats", type=int, default=1)
    a = ap.parse_args()

    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    prompts = [json.loads(l)["ids"] for l in open(a.prompts) if l.strip()]
    B, N = len(prompts), a.max_new_tokens
    L = max(len(p) for p in prompts)
    ids = torch.zeros((B, L), dtype=torch.long)
    mask = torch.zeros((B, L), dtype=torch.long)
    for i, p in enumerate(prompts):  # left padding
        ids[i, L - len(p):] = torch.tensor(p)
        mask[i, L - len(p):] = 1
    dev = torch.device("cuda")
    ids, mask = ids.to(dev), mask.to(dev)

    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=torch.bfloat16).to(dev).eval()
    load_s = time.time() - t0
    model.generation_config.cache_implementation = "static"
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = None
    if a.compile:
        model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)

    def run(n):
        torch.cuda.synchronize()
        t = time.time()
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                 do_sample=False, temperature=None, top_p=None, top_k=None)
        torch.cuda.synchronize()
        assert out.shape == (B, L + n), out.shape
        return time.time() - t

    t0 = time.time()
    run(N)  # warm-up (static cache allocation; compilation with --compile)
    run(1)
    warm_s = time.time() - t0
    prefill = min(run(1) for _ in range(max(1, a.repeats)))
    full = min(run(N) for _ in range(max(1, a.repeats)))
    prompt_tokens = sum(len(p) for p in prompts)
    r = {
        "side": "transformers" + (" + torch.compile" if a.compile else ""),
        "transformers": transformers.__version__, "torch": torch.__version__,
        "batch": B, "max_new_tokens": N, "prompt_tokens": prompt_tokens, "padded_prompt_len": L,
        "load_seconds": round(load_s, 2), "warmup_seconds": round(warm_s, 2),
        "prefill_seconds": prefill, "generate_seconds": full,
        "prefill_tok_s": prompt_tokens / prefill,
        "decode_tok_s": B * (N - 1) / max(full - prefill, 1e-9),
        "e2e_tok_s": B * N / full,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
    }
    json.dump(r, open(a.out, "w"), indent=1)
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
