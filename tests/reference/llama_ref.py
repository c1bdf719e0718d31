#!/usr/bin/env python3
"""Independent plain-PyTorch LLaMA reference for the C++ model in examples/llama.

Written from the maths (no transformers): HF rotate-half RoPE, grouped-query causal attention with
right padding, SwiGLU, RMSNorm, tied/untied lm_head, cross-entropy with ignore_index -100 averaged
over non-masked targets (labels HF-aligned, shifted inside the loss).

It loads an HF checkpoint directory (config.json + model.safetensors, parsed by hand), runs a fixed
right-padded batch with a masked prompt in float64, and writes a safetensors fixture with:
  input_ids, labels, lengths (as F32), logit_rows (flattened b*T+t rows), logits (rows, vocab),
  loss (1), and grad.<hf name> for EVERY parameter.

usage: /usr/bin/python3 llama_ref.py MODEL_DIR OUT.safetensors
exit code 3 when torch is unavailable (the C++ test then skips with a message).
"""
import json
import math
import struct
import sys

try:
    import numpy as np
    import torch
except ImportError as e:  # pragma: no cover
    print(f"llama_ref.py: torch/numpy unavailable ({e})", file=sys.stderr)
    sys.exit(3)


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        dt = info["dtype"]
        raw = data[base + b: base + e]
        if dt == "F32":
            arr = np.frombuffer(raw, dtype="<f4").astype(np.float64)
        elif dt == "BF16":
            arr = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        elif dt == "F16":
            arr = np.frombuffer(raw, dtype="<f2").astype(np.float64)
        else:
            raise ValueError(f"unsupported dtype {dt} for {name}")
        out[name] = torch.tensor(arr.reshape(info["shape"]))
    return out


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name, t in tensors.items():
        a = np.ascontiguousarray(t.detach().cpu().numpy().astype("<f4"))
        b = a.tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - (len(h) + 8) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def rope_inv_freq(cfg, head_dim):
    rp = cfg.get("rope_parameters") or {}
    theta = cfg.get("rope_theta", rp.get("rope_theta", 10000.0))
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    sc = cfg.get("rope_scaling") or rp
    if sc and sc.get("rope_type", sc.get("type")) == "llama3":
        factor, lo, hi = sc["factor"], sc["low_freq_factor"], sc["high_freq_factor"]
        old = sc["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > old / lo, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old / hi) & ~(wavelen > old / lo)
        inv = torch.where(medium, smoothed, scaled)
    return inv


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def rmsnorm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def forward(cfg, P, ids, lengths):
    B, T = ids.shape
    D, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads") or nh
    hd = cfg.get("head_dim") or D // nh
    eps = cfg.get("rms_norm_eps", 1e-6)
    inv = rope_inv_freq(cfg, hd)
    pos = torch.arange(T, dtype=torch.float64)
    ang = torch.outer(pos, inv)
    emb = torch.cat((ang, ang), dim=-1)
    dt = P["model.embed_tokens.weight"].dtype
    cos, sin = emb.cos()[None, None].to(dt), emb.sin()[None, None].to(dt)  # (1,1,T,hd)
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    keyok = torch.arange(T)[None, :] < lengths[:, None]  # (B,T)
    mask = causal[None, None] & keyok[:, None, None, :]  # (B,1,T,T)
    x = P["model.embed_tokens.weight"][ids]
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        xn = rmsnorm(x, P[p + "input_layernorm.weight"], eps)
        q = (xn @ P[p + "self_attn.q_proj.weight"].T).view(B, T, nh, hd).transpose(1, 2)
        k = (xn @ P[p + "self_attn.k_proj.weight"].T).view(B, T, nkv, hd).transpose(1, 2)
        v = (xn @ P[p + "self_attn.v_proj.weight"].T).view(B, T, nkv, hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = nh // nkv
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        s = s.masked_fill(~mask, float("-inf"))
        a = torch.softmax(s, dim=-1) @ v
        a = a.transpose(1, 2).reshape(B, T, nh * hd)
        x = x + a @ P[p + "self_attn.o_proj.weight"].T
        xn = rmsnorm(x, P[p + "post_attention_layernorm.weight"], eps)
        g = xn @ P[p + "mlp.gate_proj.weight"].T
        u = xn @ P[p + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(g) * u) @ P[p + "mlp.down_proj.weight"].T
    x = rmsnorm(x, P["model.norm.weight"], eps)
    W = P["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings", False) else P["lm_head.weight"]
    return x @ W.T  # (B,T,V)


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    model_dir, out = sys.argv[1], sys.argv[2]
    cfg = json.load(open(f"{model_dir}/config.json"))
    P = read_safetensors(f"{model_dir}/model.safetensors")
    for t in P.values():
        t.requires_grad_(True)
    V = cfg["vocab_size"]
    B, T = 3, 24
    lengths = torch.tensor([24, 17, 9])
    rng = np.random.RandomState(1234)
    ids = torch.tensor(rng.randint(3, V, size=(B, T)), dtype=torch.long)
    ids[:, 0] = 1  # BOS
    labels = ids.clone()
    labels[1, :6] = -100  # masked prompt
    labels[2, :3] = -100
    for b in range(B):
        ids[b, lengths[b]:] = 0  # right padding
        labels[b, lengths[b]:] = -100
    logits = forward(cfg, P, ids, lengths)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1),
                                             ignore_index=-100)
    loss.backward()
    rows = [0, 5, 23, 24 + 0, 24 + 16, 48 + 3, 48 + 8]
    fx = {
        "input_ids": ids.double(), "labels": labels.double(), "lengths": lengths.double(),
        "logit_rows": torch.tensor(rows, dtype=torch.float64),
        "logits": logits.reshape(B * T, V)[rows].detach(),
        "loss": loss.detach().reshape(1),
    }
    for name, t in P.items():
        fx["grad." + name] = t.grad
    write_safetensors(out, fx)
    print(f"llama_ref.py: loss {loss.item():.6f}, {len(P)} gradients -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
