#!/usr/bin/env python3
"""A random-init LLaMA of a known shape, saved by transformers as BF16 safetensors.

Presets (--preset, default tinyllama):
  tinyllama  TinyLlama-1.1B: hidden 2048, 22 layers, 32 heads, 4 KV heads (GQA), intermediate 5632,
             max_position 2048
  llama2-7b  LLaMA-2-7B: hidden 4096, 32 layers, 32 heads, 32 KV heads (no GQA), intermediate 11008,
             max_position 4096
  llama3-8b  LLaMA-3-8B's body: hidden 4096, 32 layers, 32 heads, 8 KV heads (GQA 4), intermediate
             14336, rope_theta 500000, max_position 8192 — but vocab 32000 (the LLaMA-2 tokenizer
             here), not LLaMA-3's 128,256: the classifier is 4× smaller than the real model's
  codellama-34b  CodeLlama-34B's shape (issue 13's one-GPU fit target): hidden 8192, 48 layers, 64 heads,
             8 KV heads, intermediate 22016, max_position 16384; 67.5 GB in bf16 — more than the
             single-H200 machine's 64 GiB disk: write it with --shard-dirs (below)
All: vocab 32000 (the LLaMA-2 tokenizer), rope_theta 10000 (llama3-8b: 500000), RMSNorm eps 1e-5, untied lm_head.
--layers N overrides num_hidden_layers (a shorter model of the same width when time is short; the
benchmark table reports it). Weights: transformers' own LlamaForCausalLM initialisation (normal,
std 0.02) under torch.manual_seed(--seed), made directly in bf16 (torch default dtype bf16 while the
model is built: no fp32 copy anywhere) on the GPU when there is one, and written with
save_pretrained (tensors copied to the host one at a time). 7B shape: 13.5 GB on disk; on an H200
the init takes seconds and the write is bound by the disk. No pretrained weights exist here:
throughput only, never quality. Writes shape.json (preset, layers) beside config.json.

--shard-dirs DIR[,DIR...]: write the weights shard by shard (--max-shard-gb each, default 5) with
safetensors' save_file instead of save_pretrained, each shard into whichever of the directories
has the most free space at that moment, symlinked from OUT_DIR; OUT_DIR gets config.json,
generation_config.json, model.safetensors.index.json and shape.json as save_pretrained writes them.
Host memory holds one shard at a time. For a checkpoint larger than one filesystem, e.g. the 34B
shape on the device machine: --shard-dirs /dev/shm/m34,/tmp/m34 (RAM-backed tmpfs + disk).

usage: make_model.py OUT_DIR [--preset tinyllama|llama2-7b|llama3-8b|codellama-34b] [--layers N] [--seed 0]
                     [--shard-dirs DIR,... [--max-shard-gb 5]]   (torch + transformers + safetensors)
"""
import argparse
import json
import os
import sys
import time

PRESETS = {
    "tinyllama": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                      num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048),
    "llama2-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096),
    "llama3-8b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                      rope_theta=500000.0),
    "codellama-34b": dict(vocab_size=32000, hidden_size=8192, intermediate_size=22016, num_hidden_layers=48,
                          num_attention_heads=64, num_key_value_heads=8, max_position_embeddings=16384),
}


def write_sharded(model, out, dirs, max_bytes):
    """Shards of <= max_bytes (a larger tensor gets its own), each into the directory of `dirs` with the
    most free space, symlinked from `out`; the index, config and generation config into `out`."""
    import shutil
    import torch
    from safetensors.torch import save_file
    for d in dirs:
        os.makedirs(d, exist_ok=True)
    sd = model.state_dict()
    groups, cur, size = [], [], 0
    for name, t in sd.items():
        b = t.numel() * t.element_size()
        if cur and size + b > max_bytes:
            groups.append(cur)
            cur, size = [], 0
        cur.append(name)
        size += b
    if cur:
        groups.append(cur)
    weight_map, total = {}, 0
    for i, names in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        need = sum(sd[n].numel() * sd[n].element_size() for n in names)
        d = max(dirs, key=lambda x: shutil.disk_usage(x).free)
        free = shutil.disk_usage(d).free
        if free < need + (1 << 28):
            raise SystemExit(f"make_model.py: shard {fname} needs {need / 1e9:.2f} GB, the roomiest of {dirs} ({d}) "
                             f"has {free / 1e9:.2f} GB free")
        path = os.path.join(d, fname)
        save_file({n: sd[n].detach().to("cpu").contiguous() for n in names}, path, metadata={"format": "pt"})
        link = os.path.join(out, fname)
        if os.path.abspath(path) != os.path.abspath(link):
            if os.path.lexists(link):
                os.remove(link)
            os.symlink(os.path.abspath(path), link)
        for n in names:
            weight_map[n] = fname
        total += need
        print(f"make_model.py: {fname} ({len(names)} tensors, {need / 1e9:.2f} GB) -> {d}", flush=True)
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    model.config.torch_dtype = torch.bfloat16  # as save_pretrained records them
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(out)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tinyllama")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", type=int, default=0, help="num_hidden_layers override (0 = the preset's)")
    ap.add_argument("--shard-dirs", default="", help="comma-separated directories for the shards (see above)")
    ap.add_argument("--max-shard-gb", type=float, default=5.0)
    a = ap.parse_args()
    shard_dirs = [d for d in a.shard_dirs.split(",") if d]
    import torch
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    kw = dict(PRESETS[a.preset])
    full_layers = kw["num_hidden_layers"]
    if a.layers:
        kw["num_hidden_layers"] = a.layers
    kw.update(rms_norm_eps=1e-5, hidden_act="silu", tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
              initializer_range=0.02)
    theta = kw.pop("rope_theta", 10000.0)
    try:  # transformers 5: rope parameters in one dict
        cfg = LlamaConfig(rope_parameters={"rope_type": "default", "rope_theta": theta}, **kw)
    except TypeError:
        cfg = LlamaConfig(rope_theta=theta, **kw)
    t0 = time.time()
    torch.manual_seed(a.seed)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # parameters are created and initialised in bf16
    try:
        with torch.device(dev):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    model = model.to(torch.bfloat16)  # no-op unless some buffer/parameter escaped the default dtype
    n = sum(p.numel() for p in model.parameters())
    if dev == "cuda":
        torch.cuda.synchronize()
    t1 = time.time()
    os.makedirs(a.out, exist_ok=True)
    if shard_dirs:
        write_sharded(model, a.out, shard_dirs, int(a.max_shard_gb * 1e9))
    else:
        model.save_pretrained(a.out, max_shard_size="5GB")
    with open(os.path.join(a.out, "shape.json"), "w") as f:
        json.dump({"preset": a.preset, "layers": kw["num_hidden_layers"], "preset_layers": full_layers,
                   "parameters": n, "seed": a.seed}, f)
    print(f"make_model.py: {a.preset} ({kw['num_hidden_layers']} of {full_layers} layers), transformers "
          f"{transformers.__version__}, {n / 1e9:.4f} B parameters (seed {a.seed}, init {t1 - t0:.1f} s on {dev}, "
          f"save {time.time() - t1:.1f} s) -> {a.out}: {sorted(os.listdir(a.out))}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
