#!/usr/bin/env python3
"""A random-init TinyLlama-1.1B-shaped LLaMA, saved by transformers as BF16 safetensors.

Shapes of TinyLlama-1.1B: hidden 2048, 22 layers, 32 heads, 4 KV heads (GQA), intermediate 5632,
vocab 32000 (the LLaMA-2 tokenizer), rope_theta 10000, max_position 2048, RMSNorm eps 1e-5,
untied lm_head. Weights: transformers' own LlamaForCausalLM initialisation (normal, std 0.02)
under torch.manual_seed(--seed), made on the GPU when there is one, cast to bf16 and written with
save_pretrained. No pretrained weights exist here: throughput only, never quality.

usage: make_model.py OUT_DIR [--seed 0] [--layers 22]   (needs torch + transformers)
"""
import argparse
import os
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", type=int, default=22, help="num_hidden_layers (22 = TinyLlama)")
    a = ap.parse_args()
    import torch
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    kw = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=a.layers,
              num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-5,
              hidden_act="silu", tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
              initializer_range=0.02)
    try:  # transformers 5: rope parameters in one dict
        cfg = LlamaConfig(rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **kw)
    except TypeError:
        cfg = LlamaConfig(rope_theta=10000.0, **kw)
    t0 = time.time()
    torch.manual_seed(a.seed)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(dev):
        model = LlamaForCausalLM(cfg)
    model = model.to(torch.bfloat16)
    n = sum(p.numel() for p in model.parameters())
    t1 = time.time()
    os.makedirs(a.out, exist_ok=True)
    model.save_pretrained(a.out)
    print(f"make_model.py: transformers {transformers.__version__}, {n / 1e9:.4f} B parameters "
          f"(seed {a.seed}, init {t1 - t0:.1f} s on {dev}, save {time.time() - t1:.1f} s) -> {a.out}: "
          f"{sorted(os.listdir(a.out))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
