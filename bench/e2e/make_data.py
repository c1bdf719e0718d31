#!/usr/bin/env python3
"""Throughput data: Alpaca-style JSONL whose every example is >= 512 LLaMA-2 tokens long.

Each record is one real GSM8K training problem (instruction = its question) whose response is its
worked answer followed by further real GSM8K problems with their answers ("Question: ...\\nAnswer:
...") until the text has at least --min-chars characters. Truncated at --max-len 512 by both
pipelines, every micro-batch is then exactly B x 512 tokens with no padding; the prompt (masked)
is one question, so every example keeps several hundred target tokens.

Nothing is written into tracked files: the output goes where you say (the scripts use the
git-ignored .devdata/throughput/). Standard library only.

usage: make_data.py GSM8K_TRAIN.jsonl OUT.jsonl [--records 1200] [--min-chars 3000]
"""
import argparse
import json
import os
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gsm8k_train")
    ap.add_argument("out")
    ap.add_argument("--records", type=int, default=1200)
    ap.add_argument("--min-chars", type=int, default=3000)
    a = ap.parse_args()
    rows = []
    with open(a.gsm8k_train) as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            r = json.loads(line)
            if "question" not in r or "answer" not in r:
                sys.exit(f"make_data.py: {a.gsm8k_train}:{i + 1}: expected keys question/answer, found {sorted(r)}")
            rows.append((r["question"].strip(), r["answer"].strip()))
    if len(rows) < 2:
        sys.exit(f"make_data.py: expected GSM8K records in {a.gsm8k_train}, found {len(rows)}")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        for k in range(a.records):
            q, ans = rows[k % len(rows)]
            parts, j = [ans], k + 1
            while sum(len(p) for p in parts) < a.min_chars:
                q2, a2 = rows[j % len(rows)]
                parts.append(f"Question: {q2}\nAnswer: {a2}")
                j += 1
            f.write(json.dumps({"instruction": q, "input": "", "output": "\n\n".join(parts)}) + "\n")
    os.replace(tmp, a.out)
    print(f"make_data.py: {a.records} records -> {a.out}")


if __name__ == "__main__":
    main()
