#!/usr/bin/env python3
"""Writes a randomly initialised LLaMA-architecture checkpoint in the Hugging Face layout
(config.json + model.safetensors [+ tokenizer.model]) with numpy alone (no torch, no transformers).

Initialisation follows transformers' LlamaPreTrainedModel: every linear and the embedding
~ N(0, initializer_range²), RMSNorm weights = 1. Used for throughput and rank studies at real
shapes where no pretrained checkpoint of that shape is available: numbers obtained on such a model
must say "random init".

  scripts/make-random-llama.py --out runs/rand512 --hidden 512 --layers 8 --heads 8 --kv-heads 4 \
      --intermediate 1408 --vocab 32000 --tokenizer ../shared/data/llama2_tokenizer/tokenizer.model
  scripts/make-random-llama.py --preset tinyllama --dtype bf16 --out /tmp/tinyllama-rand
"""
import argparse
import json
import os
import shutil
import struct
import sys
import tempfile

import numpy as np

PRESETS = {
    # TinyLlama-1.1B's shape (untied lm_head, GQA 32/4).
    "tinyllama": dict(hidden=2048, layers=22, heads=32, kv_heads=4, intermediate=5632, vocab=32000,
                      max_pos=2048, tie=False),
    # LLaMA-2-7B's shape.
    "llama2-7b": dict(hidden=4096, layers=32, heads=32, kv_heads=32, intermediate=11008, vocab=32000,
                      max_pos=4096, tie=False),
}


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """fp32 → bf16 bit patterns (uint16), round to nearest even (NaN not expected here)."""
    u = x.astype(np.float32).view(np.uint32)
    rounding = ((u >> 16) & 1) + 0x7FFF
    return ((u + rounding) >> 16).astype(np.uint16)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory (must not exist, or be empty)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="a known shape; explicit flags override it")
    p.add_argument("--hidden", type=int)
    p.add_argument("--layers", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--kv-heads", type=int)
    p.add_argument("--intermediate", type=int)
    p.add_argument("--vocab", type=int)
    p.add_argument("--max-pos", type=int)
    p.add_argument("--tie", type=int, choices=[0, 1], help="1: tied embeddings (no lm_head.weight)")
    p.add_argument("--rope-theta", type=float, default=10000.0)
    p.add_argument("--init-std", type=float, default=0.02, help="initializer_range")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", help="a SentencePiece .model to copy in as tokenizer.model")
    a = p.parse_args()

    cfg = dict(PRESETS.get(a.preset, {}))
    for k in ("hidden", "layers", "heads", "kv_heads", "intermediate", "vocab", "max_pos", "tie"):
        v = getattr(a, k)
        if v is not None:
            cfg[k] = v
    cfg.setdefault("max_pos", 2048)
    cfg.setdefault("tie", False)
    missing = [k for k in ("hidden", "layers", "heads", "kv_heads", "intermediate", "vocab") if k not in cfg]
    if missing:
        p.error("expected a --preset or the flags " + ", ".join("--" + m.replace("_", "-") for m in missing))
    H, L, nh, nkv, I, V = (cfg[k] for k in ("hidden", "layers", "heads", "kv_heads", "intermediate", "vocab"))
    if H % nh or nh % nkv:
        p.error(f"expected hidden % heads == 0 and heads % kv_heads == 0, found hidden {H}, heads {nh}, kv_heads {nkv}")
    hd = H // nh
    if a.tokenizer and not os.path.isfile(a.tokenizer):
        p.error(f"--tokenizer: file not found: {a.tokenizer}")
    if os.path.exists(a.out) and (not os.path.isdir(a.out) or os.listdir(a.out)):
        p.error(f"--out {a.out} exists and is not an empty directory")

    rng = np.random.default_rng(a.seed)
    shapes = [("model.embed_tokens.weight", (V, H), "normal")]
    for l in range(L):
        pre = f"model.layers.{l}."
        shapes += [
            (pre + "input_layernorm.weight", (H,), "ones"),
            (pre + "self_attn.q_proj.weight", (nh * hd, H), "normal"),
            (pre + "self_attn.k_proj.weight", (nkv * hd, H), "normal"),
            (pre + "self_attn.v_proj.weight", (nkv * hd, H), "normal"),
            (pre + "self_attn.o_proj.weight", (H, nh * hd), "normal"),
            (pre + "post_attention_layernorm.weight", (H,), "ones"),
            (pre + "mlp.gate_proj.weight", (I, H), "normal"),
            (pre + "mlp.up_proj.weight", (I, H), "normal"),
            (pre + "mlp.down_proj.weight", (H, I), "normal"),
        ]
    shapes.append(("model.norm.weight", (H,), "ones"))
    if not cfg["tie"]:
        shapes.append(("lm_head.weight", (V, H), "normal"))

    st_dtype, esize = ("BF16", 2) if a.dtype == "bf16" else ("F32", 4)
    header, offset = {"__metadata__": {"format": "pt", "note": f"random init N(0, {a.init_std}^2), seed {a.seed}"}}, 0
    for name, shape, _ in shapes:
        n = int(np.prod(shape)) * esize
        header[name] = {"dtype": st_dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    hbytes = json.dumps(header, separators=(",", ":")).encode()
    hbytes += b" " * (-len(hbytes) % 8)

    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": H, "intermediate_size": I, "num_hidden_layers": L, "num_attention_heads": nh,
        "num_key_value_heads": nkv, "head_dim": hd, "vocab_size": V, "max_position_embeddings": cfg["max_pos"],
        "rms_norm_eps": 1e-5, "rope_theta": a.rope_theta, "tie_word_embeddings": bool(cfg["tie"]),
        "attention_bias": False, "mlp_bias": False, "initializer_range": a.init_std,
        "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16" if a.dtype == "bf16" else "float32",
    }
    # Write into a temporary directory beside the target, then rename: no half-written checkpoint.
    parent = os.path.dirname(os.path.abspath(a.out)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-random-llama-", dir=parent)
    os.chmod(tmp, 0o755)
    try:
        with open(os.path.join(tmp, "model.safetensors"), "wb") as f:
            f.write(struct.pack("<Q", len(hbytes)))
            f.write(hbytes)
            for name, shape, kind in shapes:
                if kind == "ones":
                    x = np.ones(shape, dtype=np.float32)
                    f.write(to_bf16_bits(x).tobytes() if a.dtype == "bf16" else x.tobytes())
                    continue
                rows = shape[0]
                step = max(1, (1 << 24) // shape[1])  # ≤ 16M values at a time
                for r0 in range(0, rows, step):
                    x = (rng.standard_normal((min(step, rows - r0), shape[1]), dtype=np.float32) * a.init_std)
                    f.write(to_bf16_bits(x).tobytes() if a.dtype == "bf16" else x.astype("<f4").tobytes())
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
            f.write("\n")
        if a.tokenizer:
            shutil.copyfile(a.tokenizer, os.path.join(tmp, "tokenizer.model"))
        if os.path.isdir(a.out):
            os.rmdir(a.out)
        os.rename(tmp, a.out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    n_params = sum(int(np.prod(s)) for _, s, _ in shapes)
    print(f"make-random-llama: wrote {a.out} ({n_params / 1e6:.1f} M parameters, {a.dtype}, random init N(0, {a.init_std}^2))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
