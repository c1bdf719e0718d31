#!/usr/bin/env python3
"""Offline smoke test of peft_throughput.py's training loop: runs its main() on the CPU with
stand-ins for CUDA, transformers and peft (a tiny LM), so the control flow (methods, regrouping,
compile / cg paths, records) is exercised without a GPU. Needs torch (any recent version), not
transformers or peft. Numbers are meaningless.

usage: python3 bench/e2e/test_peft_offline.py BATCHES.json   (exit 0 = pass)
"""
import json, os, sys, tempfile, types
import torch
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
# --- CUDA stand-ins
torch.cuda.is_available = lambda: True
for n in ("synchronize", "reset_peak_memory_stats", "empty_cache"):
    setattr(torch.cuda, n, lambda *a, **k: None)
torch.cuda.max_memory_allocated = lambda *a: 123 << 20
torch.cuda.max_memory_reserved = lambda *a: 150 << 20
torch.cuda.mem_get_info = lambda *a: (1000 << 20, 2000 << 20)
torch.cuda.get_device_name = lambda *a: "FakeGPU"
torch.Tensor.cuda = lambda self, *a, **k: self
_AdamW = torch.optim.AdamW
torch.optim.AdamW = lambda params, fused=None, **kw: _AdamW(params, **kw)
compiled = []
_to = torch.nn.Module.to
torch.nn.Module.to = lambda self, *a, **k: self if a and a[0] == 'cuda' else _to(self, *a, **k)
torch.nn.Module.compile = lambda self, **kw: compiled.append((type(self).__name__, kw))
torch.compiler = types.SimpleNamespace(cudagraph_mark_step_begin=lambda: None)
_autocast = torch.autocast
torch.autocast = lambda dev, dtype=None, enabled=True: _autocast("cpu", dtype=torch.bfloat16, enabled=enabled)
# --- transformers / peft stand-ins
class Out:  # CausalLMOutput
    def __init__(self, loss): self.loss = loss
class TinyLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.config = types.SimpleNamespace(use_cache=True)
        self.emb = torch.nn.Embedding(32000, 16)
        self.q_proj = torch.nn.Linear(16, 16, bias=False)
        self.lm_head = torch.nn.Linear(16, 32000, bias=False)
    def forward(self, input_ids, labels):
        h = self.q_proj(self.emb(input_ids))
        logits = self.lm_head(h).float()
        return Out(torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 32000), labels[:, 1:].reshape(-1), ignore_index=-100))
    def gradient_checkpointing_enable(self, **kw): pass
class AutoModelForCausalLM:
    @staticmethod
    def from_pretrained(path, dtype=None, attn_implementation=None, device_map=None):
        assert attn_implementation == "sdpa"
        if device_map and os.environ.get("MOCK_NO_DEVMAP"): raise ValueError("device_map needs accelerate")
        return TinyLM().to(dtype)
tr = types.ModuleType("transformers"); tr.AutoModelForCausalLM = AutoModelForCausalLM; tr.__version__ = "5.17-mock"
sys.modules["transformers"] = tr
class PeftWrap(torch.nn.Module):
    def __init__(self, m, bf16):
        super().__init__()
        self.base = m
        for p in m.parameters(): p.requires_grad_(False)
        self.lora_A = torch.nn.Parameter(torch.zeros(16, 4, dtype=torch.float32 if bf16 else torch.bfloat16))
    def get_base_model(self): return self.base
    def forward(self, **kw):
        o = self.base(**kw); o.loss = o.loss + self.lora_A.float().sum() * 0; return o
pf = types.ModuleType("peft"); pf.__version__ = "0.21-mock"
pf.LoraConfig = lambda **kw: kw
pf.get_peft_model = lambda m, cfg, autocast_adapter_dtype=True: PeftWrap(m, autocast_adapter_dtype)
sys.modules["peft"] = pf
import peft_throughput as pt
out = os.path.join(tempfile.mkdtemp(), "peft.jsonl")
methods = ["lora", "lora-bf16", "lora-compile", "pissa-bf16-cg", "full-compile"]
sys.argv = ["peft_throughput.py", "--model", "x", "--batches", sys.argv[1], "--methods", ",".join(methods),
            "--micro-batch", "4", "--grad-accum", "1", "--warmup", "1", "--steps", "1", "--peak-tflops", "800",
            "--out", out]
rc = pt.main()
recs = [json.loads(l) for l in open(out)]
assert rc == 0, (rc, [r.get("error") for r in recs])
assert [r["method"] for r in recs] == methods
assert all(r["micro_batch"] == 4 and r["tokens_per_step"] == 4 * 512 for r in recs)
assert [r["compile_mode"] for r in recs] == [None, None, "default", "reduce-overhead", "default"]
assert [r["adapter_dtype"] for r in recs[:2]] == ["torch.float32", "torch.bfloat16"]
assert len(compiled) == 3 and all(r["peak_device_bytes"] > 0 and r["mfu"] for r in recs)
print("test_peft_offline.py: PASS")
