#!/usr/bin/env python3
"""Tiny seeded random Qwen2 and Mistral checkpoints with transformers' own logits, loss and
gradients, for tests/llama/test_model_families.cpp ("model families: transformers fixtures").

Run where torch + transformers exist (the GPU machine; CPU is enough):
    python3 tests/reference/make_model_fixtures.py [--out tests/llama/fixtures/models]

Writes <out>/<name>/ for name in (qwen2, mistral): save_pretrained() in float32 (config.json,
model.safetensors, generation_config.json) and reference.safetensors holding
    input_ids  (B, T) float32 (exact small integers; our reader reads floating tensors)
    logits     (B*T, vocab) float32
    loss       (1,) float32      mean next-token cross-entropy, labels = input_ids
    grad.<parameter name>        gradients of a few weights / biases (HF names)
Computed with eager attention, float32, TF32 off, on the CPU.

Shapes: hidden 64, 2 layers, 4 heads (head_dim 16), 2 KV heads, intermediate 128, vocab 256.
Qwen2 (q/k/v biases, tied embeddings, no sliding window). Mistral: sliding_window 8 with
sequences of 24, so the window binds (transformers' masking_utils: key j visible from query i iff
i - 8 < j <= i).
"""
import argparse
import os
import sys

import torch

try:
    import transformers
    from safetensors.torch import save_file
except ImportError as e:  # pragma: no cover
    sys.exit(f"make_model_fixtures.py: needs transformers and safetensors ({e})")

COMMON = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=128, vocab_size=256, max_position_embeddings=64, rms_norm_eps=1e-6,
              rope_theta=10000.0, hidden_act="silu", bos_token_id=1, eos_token_id=2)
B, T = 2, 24


def build(name):
    if name == "qwen2":
        cfg = transformers.Qwen2Config(**COMMON, tie_word_embeddings=True, use_sliding_window=False,
                                       sliding_window=None, max_window_layers=2)
        cls = transformers.Qwen2ForCausalLM
        grads = ["model.layers.0.self_attn.q_proj.bias", "model.layers.1.self_attn.k_proj.bias",
                 "model.layers.1.self_attn.v_proj.bias", "model.layers.0.self_attn.q_proj.weight",
                 "model.layers.1.mlp.down_proj.weight", "model.embed_tokens.weight"]
    else:
        cfg = transformers.MistralConfig(**COMMON, tie_word_embeddings=False, sliding_window=8)
        cls = transformers.MistralForCausalLM
        grads = ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight",
                 "model.layers.1.self_attn.v_proj.weight", "model.layers.0.self_attn.o_proj.weight",
                 "lm_head.weight"]
    cfg._attn_implementation = "eager"
    torch.manual_seed(1234 if name == "qwen2" else 4321)
    model = cls(cfg).float().eval()
    with torch.no_grad():  # larger-than-default random weights so attention is far from uniform
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif n.endswith(".bias"):
                p.copy_(0.5 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    return model, grads


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "llama", "fixtures", "models"))
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_num_threads(1)
    for name in ("qwen2", "mistral"):
        model, grad_names = build(name)
        out = os.path.join(args.out, name)
        os.makedirs(out, exist_ok=True)
        model.save_pretrained(out, safe_serialization=True)
        g = torch.Generator().manual_seed(7)
        ids = torch.randint(3, COMMON["vocab_size"], (B, T), generator=g)
        res = model(input_ids=ids, labels=ids)
        res.loss.backward()
        params = dict(model.named_parameters())
        ref = {"input_ids": ids.float().contiguous(),
               "logits": res.logits.detach().reshape(B * T, -1).float().contiguous(),
               "loss": res.loss.detach().reshape(1).float().contiguous()}
        for n in grad_names:
            if n == "lm_head.weight" and model.config.tie_word_embeddings:
                continue
            ref["grad." + n] = params[n].grad.detach().float().contiguous()
        save_file(ref, os.path.join(out, "reference.safetensors"))
        size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
        print(f"{name}: transformers {transformers.__version__}, loss {res.loss.item():.6f}, "
              f"{len(ref) - 3} gradients, {size / 1024:.0f} KiB in {out}")


if __name__ == "__main__":
    main()
