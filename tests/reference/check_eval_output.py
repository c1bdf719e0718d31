#!/usr/bin/env python3
"""Checks the outputs of `hdpissa-eval --task T --output DIR`: DIR/T.jsonl (one record per problem,
the documented fields) and DIR/T_summary.json (n, correct, accuracy consistent with the records).
usage: check_eval_output.py DIR TASK N"""
import json, os, sys

d, task, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
recs = [json.loads(l) for l in open(f"{d}/{task}.jsonl")]
assert len(recs) == n, f"expected {n} records, found {len(recs)}"
need = {"id", "prompt", "completion", "extracted", "reference", "correct"}
if task in ("humaneval", "mbpp"):
    need |= {"status", "exit_code", "seconds", "stderr_tail"}
for r in recs:
    missing = need - set(r)
    assert not missing, f"record {r.get('id')}: missing {missing}"
    assert isinstance(r["correct"], bool)
    assert r["prompt"] and isinstance(r["completion"], str)
s = json.load(open(f"{d}/{task}_summary.json"))
assert s["task"] == task and s["n"] == n, s
assert s["correct"] == sum(r["correct"] for r in recs)
assert abs(s["accuracy"] - s["correct"] / n) < 1e-12
assert "prompt_template" in s["protocol"] and s["protocol"]["decoding"] == "greedy"
left = [f for f in os.listdir(d) if ".tmp" in f]  # the records are renamed into place when the task ends
assert not left, f"temporary files left in {d}: {left}"
print(f"check_eval_output: PASS ({task}: {n} records, accuracy {s['accuracy']})")
