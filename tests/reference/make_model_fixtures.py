#!/usr/bin/env python3
"""TO BE RUN WHERE torch + transformers EXIST (the GPU machine); the outputs are committed and CI
checks our CPU model against them (issue 15: model families beyond LLaMA).

Builds tiny, seeded, randomly initialised models of the families the paper and users fine-tune,
through transformers itself (the independent reference), and records what transformers computes:

  qwen2          Qwen2ForCausalLM: q/k/v biases (o_proj and the MLP without), GQA, untied classifier
  qwen2-tied     the same with tie_word_embeddings (Qwen2-0.5B / 1.5B style)
  mistral-swa    MistralForCausalLM with sliding_window 8 on sequences of 24: the window matters
  llama3-rope    LlamaForCausalLM with LLaMA-3.1 rope scaling (rope_type llama3) and GQA

Each goes to OUT/<name>/: config.json + model.safetensors (save_pretrained, fp32) and
reference.safetensors with
  input_ids (2, T) int64, lengths (2,) int64  — row 1 right-padded after lengths[1] tokens
  logits (2, T, V) fp32                       — eager attention, fp32, no TF32, attention_mask
  loss () fp32                                — HF shift, token mean over both rows, padding -100
  grad.<tensor name>                          — d loss / d that tensor, for a few weights and biases
Sizes: hidden 64, 2 layers, 4 heads, 2 KV heads, intermediate 128, vocab 256 (≈ 100 KB a model).

usage: make_model_fixtures.py [--out tests/llama/fixtures/models]
exit: 0 written, 77 torch / transformers missing.
"""
import argparse
import json
import os
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "llama", "fixtures", "models"))
    a = ap.parse_args()
    try:
        import torch
        import transformers
        from transformers import LlamaConfig, MistralConfig, Qwen2Config, AutoModelForCausalLM
        from safetensors.torch import save_file
    except ImportError as e:
        print(f"make_model_fixtures.py: SKIP: {e}", file=sys.stderr)
        return 77
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    common = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=256, max_position_embeddings=128, rms_norm_eps=1e-6,
                  bos_token_id=1, eos_token_id=2, attn_implementation="eager")
    specs = {
        "qwen2": (Qwen2Config, dict(common, tie_word_embeddings=False, rope_theta=1e6, use_sliding_window=False), 20,
                  ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.bias",
                   "model.layers.0.self_attn.k_proj.bias", "model.layers.1.self_attn.v_proj.bias",
                   "model.layers.1.mlp.down_proj.weight"]),
        "qwen2-tied": (Qwen2Config, dict(common, tie_word_embeddings=True, rope_theta=1e6, use_sliding_window=False), 20,
                       ["model.layers.0.self_attn.v_proj.bias", "model.embed_tokens.weight"]),
        "mistral-swa": (MistralConfig, dict(common, tie_word_embeddings=False, rope_theta=1e4, sliding_window=8), 24,
                        ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.o_proj.weight"]),
        "llama3-rope": (LlamaConfig, dict(common, tie_word_embeddings=False, rope_theta=5e5,
                                          rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                        "high_freq_factor": 4.0,
                                                        "original_max_position_embeddings": 16}), 24,
                        ["model.layers.0.self_attn.k_proj.weight"]),
    }
    for i, (name, (cls, kw, T, grads)) in enumerate(specs.items()):
        torch.manual_seed(1000 + i)
        cfg = cls(**kw)
        model = AutoModelForCausalLM.from_config(cfg).float().eval()
        with torch.no_grad():  # visible biases and a non-trivial norm scale, so a dropped term shows
            for n, p in model.named_parameters():
                if n.endswith(".bias"):
                    p.normal_(0.0, 0.5)
                elif "norm" in n:
                    p.uniform_(0.5, 1.5)
        d = os.path.join(a.out, name)
        os.makedirs(d, exist_ok=True)
        model.save_pretrained(d)
        g = torch.Generator().manual_seed(7 + i)
        ids = torch.randint(3, cfg.vocab_size, (2, T), generator=g)
        lengths = torch.tensor([T, T - 7])
        ids[0, 0] = ids[1, 0] = cfg.bos_token_id
        ids[1, lengths[1]:] = 0
        mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
        labels = ids.clone()
        labels[mask == 0] = -100
        params = dict(model.named_parameters())
        for n in grads:
            params[n].requires_grad_(True)
        out = model(input_ids=ids, attention_mask=mask)
        logits = out.logits.float()
        V = logits.shape[-1]
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1),
                                                 ignore_index=-100)
        loss.backward()
        ref = {"input_ids": ids, "lengths": lengths, "logits": logits.detach().contiguous(),
               "loss": loss.detach().reshape(())}
        for n in grads:
            ref["grad." + n] = params[n].grad.detach().contiguous()
        save_file(ref, os.path.join(d, "reference.safetensors"),
                  metadata={"transformers": transformers.__version__, "torch": torch.__version__,
                            "attn_implementation": "eager", "dtype": "float32"})
        size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
        print(f"make_model_fixtures: {name}: {type(model).__name__}, T {T}, loss {loss.item():.6f}, "
              f"{len(grads)} gradients, {size / 1024:.0f} KB -> {d}")
    with open(os.path.join(a.out, "README.md"), "w") as f:
        f.write("Tiny random models made by transformers " + transformers.__version__ +
                " with tests/reference/make_model_fixtures.py (its docstring says what is in each).\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
