#!/usr/bin/env python3
"""Offline test of summarize.py (standard library only; no GPU, torch or transformers):
synthetic runs of two shapes and two micro-batches -> the tables' best-PEFT choice, ratios, MFU,
memory and failure rows; and peft_throughput.py's pure helpers (method grammar, regrouping).

usage: python3 bench/e2e/test_summarize.py   (exit 0 = pass)
"""
import csv
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import peft_throughput as pt  # noqa: E402  (imports no torch at module level)
import summarize as sm  # noqa: E402

TINY = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "vocab_size": 32000,
        "num_attention_heads": 32, "num_key_value_heads": 4}
L7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 8, "vocab_size": 32000,
       "num_attention_heads": 32, "num_key_value_heads": 32}


def w(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


def ours_jsonl(path, tokens, step_s, peak, first=2.0, parts=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for i, s in enumerate([first] + [step_s] * 3):
            f.write(json.dumps({"type": "step", "step": i + 1, "tokens": tokens, "step_s": s, "loss": 10.0 - i,
                                "peak_device_bytes": peak - 1}) + "\n")
        summary = {"type": "summary", "peak_device_bytes": peak}
        if parts:
            summary["peak_memory_parts"] = parts
        f.write(json.dumps(summary) + "\n")


def peft_rec(method, tps, alloc, device, **kw):
    r = {"side": "peft", "method": method, "config": f"peft-{method}", "tokens_per_s": tps, "step_s_median": 8192 / tps,
         "tokens_per_step": 8192, "peak_alloc_bytes": alloc, "peak_reserved_bytes": alloc + 2**30,
         "peak_device_bytes": device, "gpu": "NVIDIA H200", "compile": "compile" in method,
         "versions": {"torch": "2.11", "peft": "0.21", "transformers": "5.17"}}
    r.update(kw)
    return r


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"ok: {what}")


def main():
    # peft_throughput.py helpers
    check(pt.parse_method("lora") == {"base": "lora", "bf16": False, "compile": False, "cg": False}, "parse lora")
    check(pt.parse_method("lora-bf16-cg") == {"base": "lora", "bf16": True, "compile": True, "cg": True},
          "parse lora-bf16-cg (cg implies compile)")
    check(pt.parse_method("pissa-compile")["compile"] and not pt.parse_method("pissa-compile")["bf16"], "parse pissa-compile")
    for bad in ("dora", "lora-fp8", "lora-"):
        try:
            pt.parse_method(bad)
        except ValueError:
            print(f"ok: '{bad}' rejected")
        else:
            raise AssertionError(f"'{bad}' accepted")
    ids = [[r * 10 + c for c in range(3)] for r in range(10)]
    g = pt.regroup(ids, ids, 4)
    check(len(g) == 2 and g[0][0] == ids[0:4] and g[1][0] == ids[4:8], "regroup 10 rows by 4: 2 micro-batches, consecutive rows")
    check(pt.regroup(ids, ids, 2)[4][0] == ids[8:10], "regroup by 2 keeps the file's batches")

    with tempfile.TemporaryDirectory() as d:
        runs = os.path.join(d, "runs")
        w(os.path.join(runs, "meta.json"), {"baseline_label": "abc1234 (previous commit)"})
        with open(os.path.join(runs, "device.jsonl"), "w") as f:
            f.write(json.dumps({"side": "device", "config": "bf16-peak", "peak_tflops": 800.0, "gpu": "NVIDIA H200"}) + "\n")
        # tinyllama, mb 2
        t = os.path.join(runs, "tinyllama")
        w(os.path.join(t, "config.json"), TINY)
        w(os.path.join(t, "shape.json"), {"preset": "tinyllama", "layers": 22, "preset_layers": 22})
        m2 = os.path.join(t, "mb2")
        w(os.path.join(m2, "run.json"), {"micro_batch": 2, "grad_accum": 8, "seq_len": 512})
        ours_jsonl(os.path.join(m2, "ours-lora.jsonl"), 8192.0, 0.16, 9 * 2**30)          # 51200 tok/s
        ours_jsonl(os.path.join(m2, "base-lora.jsonl"), 8192.0, 0.20, 10 * 2**30)         # 40960
        ours_jsonl(os.path.join(m2, "ours-hdpissa-K8.jsonl"), 65536.0, 1.024, 12 * 2**30)  # 64000
        ours_jsonl(os.path.join(m2, "ours-full.jsonl"), 8192.0, 0.2048, 20 * 2**30)       # 40000, 6N
        w(os.path.join(m2, "ours-pissa.status.json"), {"rc": 124, "timed_out": True, "timeout_s": 150, "wall_s": 150.2})
        w(os.path.join(m2, "base-hdpissa-K8.status.json"), {"rc": 0, "skipped": "deadline (DEADLINE_S=570)", "wall_s": 0})
        with open(os.path.join(m2, "peft.jsonl"), "w") as f:
            f.write(json.dumps(peft_rec("lora-bf16", 9000.0, 4 * 2**30, 5 * 2**30)) + "\n")
            f.write(json.dumps(peft_rec("lora-bf16-compile", 16000.0, 4 * 2**30, 6 * 2**30, compile_s=41.0,
                                        graph_breaks=2)) + "\n")
            f.write(json.dumps(peft_rec("full", 20000.0, 10 * 2**30, 11 * 2**30, base_method="full")) + "\n")
            f.write('{"side": "peft", "method": "lora-comp')  # a run killed mid-write
        w(os.path.join(m2, "peft-lora-compile.status.json"), {"rc": 137, "timed_out": True, "timeout_s": 240, "wall_s": 250})
        # tinyllama, mb 8
        m8 = os.path.join(t, "mb8")
        w(os.path.join(m8, "run.json"), {"micro_batch": 8, "grad_accum": 2, "seq_len": 512})
        GI = 2**30
        ours_jsonl(os.path.join(m8, "ours-lora.jsonl"), 8192.0, 0.125, 13 * GI,           # 65536
                   parts={"model.linears": 8 * GI, "model.embedding+classifier": GI // 4, "model.activations": 2 * GI,
                          "model.scratch": GI // 4, "model.loss": GI // 8, "dp.optimizer": GI // 2,
                          "adapter.factors": GI // 4, "backend.solver-scratch": GI // 8, "untracked": GI + GI // 2})
        with open(os.path.join(m8, "peft.jsonl"), "w") as f:
            f.write(json.dumps(peft_rec("lora-compile", 70000.0, 8 * 2**30, 9 * 2**30)) + "\n")
            f.write(json.dumps(peft_rec("lora-bf16-compile", 72000.0, 8 * 2**30, 9 * 2**30)) + "\n")
        # llama2-7b, 8 of 32 layers, mb 2, no PEFT numbers
        s7 = os.path.join(runs, "llama2-7b", "mb2")
        w(os.path.join(runs, "llama2-7b", "config.json"), L7B)
        w(os.path.join(runs, "llama2-7b", "shape.json"), {"preset": "llama2-7b", "layers": 8, "preset_layers": 32})
        w(os.path.join(s7, "run.json"), {"micro_batch": 2, "grad_accum": 8, "seq_len": 512})
        ours_jsonl(os.path.join(s7, "ours-hdpissa-K1.jsonl"), 8192.0, 0.4, 30 * 2**30)

        prefix = os.path.join(d, "throughput")
        p = subprocess.run([sys.executable, os.path.join(HERE, "summarize.py"), "--runs", runs, "--out-prefix", prefix],
                           capture_output=True, text=True)
        print(p.stdout)
        check(p.returncode == 0, f"summarize.py exit 0 ({p.stderr.strip()[-300:]})")
        s = json.load(open(prefix + ".json"))
        groups = {(g["shape"], g["micro_batch"]): g for g in s["groups"]}
        check(sorted(groups) == [("llama2-7b", 2), ("tinyllama", 2), ("tinyllama", 8)], "one table per (shape, micro-batch)")
        g2 = groups[("tinyllama", 2)]
        rows = {r["config"]: r for r in g2["rows"]}
        check(g2["best_peft"] == "peft-lora-bf16-compile", "best PEFT = the fastest adapter row (full excluded)")
        check(abs(rows["ours-lora"]["tokens_per_s"] - 51200) < 1e-6, "ours tokens/s drops the first step")
        check(abs(rows["ours-lora"]["vs_best_peft"] - 3.2) < 1e-9, "ours-lora vs best PEFT = 51200 / 16000")
        check(abs(rows["ours-lora"]["vs_baseline"] - 1.25) < 1e-9, "ours-lora vs ours@baseline = 51200 / 40960")
        check(abs(rows["ours-lora"]["mem_vs_baseline"] - 0.9) < 1e-9, "memory vs baseline from peak_device_bytes")
        n = sm.n_linear_from_config(os.path.join(t, "config.json"))
        check(n == 1034420224, "N of TinyLlama = 1.034 B (as the PEFT side counts nn.Linear)")
        check(abs(rows["ours-hdpissa-K8"]["mfu"] - 64000 * 4 * n / 800e12) < 1e-12, "MFU 4N against the measured peak")
        check(abs(rows["ours-full"]["mfu"] - 40000 * 6 * n / 800e12) < 1e-12, "MFU 6N for full")
        check(abs(rows["peft-full"]["mfu"] - 20000 * 6 * n / 800e12) < 1e-12, "PEFT full: 6N")
        check(rows["ours-hdpissa-K8"]["vs_baseline"] is None, "no baseline ratio where the baseline was skipped")
        check("timed out after 150 s" in rows["ours-pissa"]["error"], "a timed-out run is a row with its reason")
        check(rows["ours@baseline-hdpissa-K8"]["error"].startswith("skipped: deadline"), "a skipped run says so")
        check("timed out after 240 s" in rows["peft-lora-compile"]["error"], "a PEFT run without a record shows its status")
        check([r["config"] for r in g2["rows"]][:6] == ["ours-lora", "ours@baseline-lora", "ours-pissa", "ours-hdpissa-K8",
                                                        "ours@baseline-hdpissa-K8", "ours-full"],
              "ours rows in configuration order, each followed by its baseline")
        g8 = groups[("tinyllama", 8)]
        check(g8["best_peft"] == "peft-lora-bf16-compile" and abs(g8["rows"][0]["vs_best_peft"] - 65536 / 72000) < 1e-9,
              "mb 8: own best PEFT and ratio")
        g7 = groups[("llama2-7b", 2)]
        check(g7["best_peft"] is None and g7["rows"][0]["vs_best_peft"] is None, "no PEFT rows: no ratio, no crash")
        md = open(prefix + ".md").read()
        check(sm.memory_columns({"model.linears": 8, "model.loss": 1, "model.scratch": 2, "dwu.exchange": 3, "method": 1,
                                 "fp8.copies": 4, "cublaslt.workspace": 5, "untracked": 6})
              == {"linears": 8, "embedding + classifier": 0, "activations": 0, "model scratch + loss": 3,
                  "adapters, grads, optimizer": 4, "W precision / masters / FP8": 4, "other tracked": 5, "untracked": 6},
              "memory parts folded into columns by prefix")
        check("| ours-lora | 8.00 | 0.25 | 2.00 | 0.38 | 0.75 | 0.00 | 0.12 | 1.50 | 13.00 |" in md,
              "the memory table: one row per run with a breakdown, summing to its peak")
        check("### llama2-7b (8 of 32 layers), micro-batch 2 × 512, grad-accum 8" in md, "a shortened model says so")
        check("| **peft-lora-bf16-compile** |" in md and "compile 41 s, 2 graph breaks" in md, "best row bold, compile time in notes")
        check("ours@baseline = abc1234 (previous commit)" in md, "baseline label printed")
        check("measured in this run, 800 TFLOP/s" in md, "the measured peak is named")
        rows_csv = list(csv.DictReader(open(prefix + ".csv")))
        check(len(rows_csv) == sum(len(g["rows"]) for g in s["groups"]) and rows_csv[0]["shape"], "CSV: one line per row, with its shape")
        # best-of all lets PEFT full compete; nominal peak when none measured
        os.remove(os.path.join(runs, "device.jsonl"))
        subprocess.run([sys.executable, os.path.join(HERE, "summarize.py"), "--runs", runs, "--out-prefix", prefix,
                        "--best-of", "all"], check=True, capture_output=True)
        s = json.load(open(prefix + ".json"))
        g2 = [g for g in s["groups"] if g["shape"] == "tinyllama" and g["micro_batch"] == 2][0]
        check(g2["best_peft"] == "peft-full" and not s["peak_measured"] and s["bf16_peak_tflops"] == 989.4,
              "--best-of all; nominal 989.4 TFLOP/s without a measured peak")
    print("test_summarize.py: PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
