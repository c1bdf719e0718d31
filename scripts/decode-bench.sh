#!/usr/bin/env bash
# decode-bench.sh — GPU greedy decoding throughput, ours (hdpissa-generate --device cuda, the batched
# KV-cached decoder of docs/evaluation.md) vs transformers' generate (bf16, static cache, greedy, the
# same batch and prompt ids, the same number of new tokens), plus a timed GSM8K test evaluation
# (hdpissa-eval --task gsm8k --device cuda), in one device call on one GPU. Random-init models of the
# TinyLlama-1.1B and LLaMA-2-7B shapes (bench/e2e/make_model.py): throughput only — with random
# weights nearly every sequence runs to its token budget, never a quality number.
#
#   1. builds hdpissa-generate + hdpissa-eval (cmake --preset gpu, build/gpu) unless PREBUILT=DIR
#      (BUILD_ONLY=1: stop after the build — a first device call, then PREBUILT=build/gpu/examples/llama);
#   2. BATCH prompts of random ids (BOS + ids in [3, 32000)), lengths uniform in PROMPT_LEN, seed 0;
#   3. per shape in SHAPES: makes the model unless it exists; ours (--warmup: one untimed pass first)
#      and transformers (one warm-up generate first), each under its own timeout;
#   4. GSM8K test (1,319 problems; GSM8K_LIMIT to cut) at the shapes in GSM8K_SHAPES, up to 512 new
#      tokens, the Alpaca prompt, batch-size BATCH, under GSM8K_TIMEOUT: a run cut by the timeout is
#      reported from its last progress line (problems done, elapsed) and extrapolated to 1,319;
#   5. $OUT/decode-bench.md (one markdown table + the GSM8K rows), decode-bench.json, decode-bench.log
#      and decode-bench-logs.tar.gz.
#
# Shapes: tinyllama, llama2-7b, llama3-8b (LLaMA-3-8B's body with a 32,000-token vocabulary: GQA 4,
# make_model.py --preset llama3-8b), each a make_model.py preset.
# Env [defaults]: SHAPES ["tinyllama llama2-7b"]  BATCH [64]  NEW_TOKENS [256]  PROMPT_LEN ["96:224"]
#   GSM8K_SHAPES [llama2-7b]  GSM8K_LIMIT [0 = all]  GSM8K_NEW [512]  GSM8K_TIMEOUT [300]
#   OURS_TIMEOUT [240]  HF_TIMEOUT [300]  HF_COMPILE [0] (1: also transformers + torch.compile "reduce-overhead")
#   LAYERS_7B [32] LAYERS_TINY [22]  WORK [/tmp/hdpissa-decode-bench]  PREBUILT  JOBS [16]  OUT [build/gpu/decode-bench]
# Data: the LLaMA-2 tokenizer and GSM8K test from .devdata (carry it) or $HDPISSA_DATA.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
T0=$(date +%s)
SHAPES="${SHAPES:-tinyllama llama2-7b}"
BATCH="${BATCH:-64}"
NEW="${NEW_TOKENS:-256}"
PROMPT_LEN="${PROMPT_LEN:-96:224}"
GSM8K_SHAPES="${GSM8K_SHAPES:-llama2-7b}"
WORK="${WORK:-/tmp/hdpissa-decode-bench}"
OUTDIR="${OUT:-$ROOT/build/gpu/decode-bench}"
case "$OUTDIR" in /*) ;; *) OUTDIR="$PWD/$OUTDIR" ;; esac
mkdir -p "$OUTDIR" "$WORK/logs" "$WORK/runs"
LOG="$OUTDIR/decode-bench.log"
: > "$LOG"
say() { echo "[decode-bench $(( $(date +%s) - T0 ))s] $*" | tee -a "$LOG"; }

source "$ROOT/scripts/device-env.sh"  # PCRE2 / xxHash / CLI11 on a GPU image without them
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /' | tee -a "$LOG"

# ---- data
pick() { for f in "$@"; do [[ -f "$f" ]] && { echo "$f"; return 0; }; done; return 1; }
DATA="${HDPISSA_DATA:-$ROOT/../shared/data}"
TOK="$(pick "$ROOT/.devdata/llama2_tokenizer/tokenizer.model" "$ROOT/.devdata/throughput/tokenizer.model" "$DATA/llama2_tokenizer/tokenizer.model")" \
  || { say "expected the LLaMA-2 tokenizer.model under .devdata/ or \$HDPISSA_DATA"; exit 2; }
GSM="$(pick "$ROOT/.devdata/gsm8k/test.jsonl" "$DATA/gsm8k/test.jsonl")" || GSM=""

# ---- 1. build
if [[ -n "${PREBUILT:-}" ]]; then
  BIN="$PREBUILT"
else
  BIN="$ROOT/build/gpu/examples/llama"
  t=$(date +%s)
  (cd "$ROOT" && cmake --preset gpu -DHDPISSA_MPI=OFF >"$WORK/logs/configure.log" 2>&1 \
     && cmake --build build/gpu --target hdpissa-generate hdpissa-eval -j"${JOBS:-16}" >"$WORK/logs/build.log" 2>&1) \
    || say "build FAILED: $(grep -E 'error' "$WORK/logs/build.log" "$WORK/logs/configure.log" 2>/dev/null | head -3)"
  say "build: $(( $(date +%s) - t )) s"
fi
[[ "${BUILD_ONLY:-0}" == 1 ]] && { say "BUILD_ONLY: done"; exit 0; }
GEN="$BIN/hdpissa-generate"
EVAL="$BIN/hdpissa-eval"
[[ -x "$GEN" && -x "$EVAL" ]] || { say "expected $GEN and $EVAL"; exit 2; }

# ---- 2. prompts
PROMPTS="$WORK/prompts-b$BATCH.jsonl"
python3 - "$PROMPTS" "$BATCH" "$PROMPT_LEN" <<'PY'
import json, random, sys
out, b, (lo, hi) = sys.argv[1], int(sys.argv[2]), map(int, sys.argv[3].split(":"))
rng = random.Random(0)
with open(out, "w") as f:
    for _ in range(b):
        n = rng.randint(lo, hi)
        f.write(json.dumps({"ids": [1] + [rng.randrange(3, 32000) for _ in range(n - 1)]}) + "\n")
PY

# ---- 5. summary (after every run, so that a call cut short still returns the table so far)
summarize() {
# The binaries' commit: a prebuilt directory's COMMIT stamp (scripts/prebuilt-pack.sh) when it has
# one — on the device machine the working tree's git metadata need not be the binaries' — else HEAD.
BUILD_COMMIT="$({ tr '\n' ' ' < "${PREBUILT:-/nonexistent}/COMMIT"; } 2>/dev/null | sed 's/ *$//')"
[[ -n "$BUILD_COMMIT" ]] || BUILD_COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
python3 - "$WORK" "$OUTDIR" "$SHAPES" "$BATCH" "$NEW" "$PROMPT_LEN" "$BUILD_COMMIT" <<'PY' > "$WORK/summary.txt"
import json, os, re, sys
work, outdir, shapes, batch, new, plen, commit = sys.argv[1:8]
runs = os.path.join(work, "runs")
def load(p):
    try:
        return json.load(open(p))
    except Exception:
        return None
rows, res = [], {"commit": commit, "batch": int(batch), "new_tokens": int(new), "prompt_len": plen, "shapes": {}}
md = [f"Decode throughput at commit {commit}: batch {batch}, {new} new tokens per prompt (no early stop), "
      f"prompt lengths uniform in [{plen.replace(':', ', ')}] (random ids, seed 0), bf16, greedy, random-init weights.",
      "",
      "| shape | side | prefill tok/s | decode tok/s | end-to-end tok/s | decode vs transformers |",
      "|---|---|---:|---:|---:|---:|"]
for shape in shapes.split():
    ours = load(f"{runs}/ours-{shape}.json")
    hf = load(f"{runs}/hf-{shape}.json")
    hfc = load(f"{runs}/hf-compile-{shape}.json")
    res["shapes"][shape] = {"ours": ours, "transformers": hf, "transformers_compile": hfc}
    base = hf["decode_tok_s"] if hf else None
    for name, r in (("ours (hdpissa-generate --device cuda)", ours), ("transformers generate, static cache", hf),
                    ("transformers + torch.compile", hfc)):
        if r is None:
            if "compile" not in name:
                md.append(f"| {shape} | {name} | not run / failed | | | |")
            continue
        ratio = f"{r['decode_tok_s'] / base:.2f}x" if base else "-"
        md.append(f"| {shape} | {name} | {r['prefill_tok_s']:,.0f} | {r['decode_tok_s']:,.0f} | {r['e2e_tok_s']:,.0f} | {ratio} |")
md += ["", "GSM8K test (hdpissa-eval --task gsm8k --device cuda --dtype bf16, Alpaca prompt, up to 512 new tokens; "
       "random weights: sequences run to the budget unless EOS comes up by chance; wall = process time incl. model load "
       "and scoring):", "", "| shape | problems | wall s | generation s | new tokens | decode tok/s | prefill tok/s | note |",
       "|---|---:|---:|---:|---:|---:|---:|---|"]
for shape in shapes.split():
    st = load(f"{runs}/gsm8k-{shape}.status.json")
    logp = f"{work}/logs/gsm8k-{shape}.log"
    if st is None:
        if not os.path.exists(logp):
            continue
        st = {"rc": "still running (or killed)", "wall_seconds": "-"}
    summ = load(f"{runs}/gsm8k-{shape}/gsm8k_summary.json")
    log = open(logp).read() if os.path.exists(logp) else ""
    dec = re.findall(r"decode: (\d+) prompts, prefill (\d+) tokens in ([\d.e+-]+) s \((\d+) tok/s\), decode (\d+) tokens in (\d+) steps, ([\d.e+-]+) s \((\d+) tok/s\)", log)
    prog = re.findall(r"gsm8k: (\d+)/(\d+) problems, ([\d.]+) tok/s, prefill (\d+) tok/s, decode (\d+) tok/s, elapsed (\d+) s", log)
    g = {"rc": st["rc"], "wall_seconds": st["wall_seconds"]}
    if summ:
        g.update(problems=summ["n"], generation_seconds=summ["seconds"], new_tokens=summ["new_tokens"])
        note = "complete"
    elif prog:
        d, tot, tps, pf, dc, el = prog[-1]
        g.update(problems=int(d), total=int(tot), generation_seconds=float(el),
                 extrapolated_seconds=float(el) * int(tot) / max(1, int(d)))
        note = f"partial ({d}/{tot} done: timeout, kill or still running): {g['extrapolated_seconds']:.0f} s generation extrapolated to {tot}"
    else:
        note = f"failed (rc {st['rc']})"
    if dec:
        p, pt, ps, ptps, dt, steps, ds, dtps = dec[-1]
        g.update(decode_tok_s=int(dtps), prefill_tok_s=int(ptps), decode_tokens=int(dt))
    elif prog:
        g.update(decode_tok_s=int(prog[-1][4]), prefill_tok_s=int(prog[-1][3]))
    res["shapes"].setdefault(shape, {})["gsm8k"] = g
    md.append(f"| {shape} | {g.get('problems', '-')} | {g['wall_seconds']} | {g.get('generation_seconds', '-')} | "
              f"{g.get('new_tokens', g.get('decode_tokens', '-'))} | {g.get('decode_tok_s', '-')} | {g.get('prefill_tok_s', '-')} | {note} |")
open(f"{outdir}/decode-bench.md", "w").write("\n".join(md) + "\n")
json.dump(res, open(f"{outdir}/decode-bench.json", "w"), indent=1)
print("\n".join(md))
PY
}

# ---- 3. per shape
for shape in $SHAPES; do
  layers="${LAYERS_TINY:-22}"
  [[ "$shape" == llama2-7b || "$shape" == llama3-8b ]] && layers="${LAYERS_7B:-32}"
  model="$WORK/$shape-L$layers"
  if [[ ! -f "$model/config.json" ]]; then
    t=$(date +%s)
    python3 "$ROOT/bench/e2e/make_model.py" "$model" --preset "$shape" --layers "$layers" --seed 0 \
      >"$WORK/logs/make-model-$shape.log" 2>&1
    say "$shape: make_model rc $?, $(( $(date +%s) - t )) s"
  fi
  t=$(date +%s)
  timeout -k 10 "${OURS_TIMEOUT:-240}" "$GEN" --device cuda --dtype bf16 --model "$model" --tokenizer "$TOK" \
    --input "$PROMPTS" --output "$WORK/runs/ours-$shape.jsonl" --batch-size "$BATCH" --max-new-tokens "$NEW" \
    --no-stop --warmup --stats-json "$WORK/runs/ours-$shape.json" >"$WORK/logs/ours-$shape.log" 2>&1
  say "$shape ours: rc $?, $(( $(date +%s) - t )) s: $(tail -1 "$WORK/logs/ours-$shape.log")"
  summarize
  for c in 0 ${HF_COMPILE:-0}; do
    [[ "$c" == 1 ]] && tag=hf-compile || tag=hf
    [[ "$c" == 1 ]] && flag=--compile || flag=
    t=$(date +%s)
    timeout -k 10 "${HF_TIMEOUT:-300}" python3 "$ROOT/bench/e2e/hf_generate_bench.py" --model "$model" \
      --prompts "$PROMPTS" --max-new-tokens "$NEW" --out "$WORK/runs/$tag-$shape.json" $flag >"$WORK/logs/$tag-$shape.log" 2>&1
    say "$shape $tag: rc $?, $(( $(date +%s) - t )) s: $(tail -1 "$WORK/logs/$tag-$shape.log" | cut -c1-300)"
    summarize
    [[ "${HF_COMPILE:-0}" == 1 ]] || break
  done
  if [[ " $GSM8K_SHAPES " == *" $shape "* ]]; then
    if [[ -z "$GSM" ]]; then
      say "$shape gsm8k: no gsm8k/test.jsonl under .devdata/ or \$HDPISSA_DATA: skipped"
    else
      lim=()
      [[ "${GSM8K_LIMIT:-0}" != 0 ]] && lim=(--limit "$GSM8K_LIMIT")
      t=$(date +%s)
      ( while sleep 15; do summarize; done ) &  # the table so far, even if this call is cut
      spid=$!
      timeout -k 10 "${GSM8K_TIMEOUT:-300}" "$EVAL" --task gsm8k --device cuda --dtype bf16 --batch-size "$BATCH" \
        --model "$model" --tokenizer "$TOK" --data "$GSM" --max-new-tokens "${GSM8K_NEW:-512}" "${lim[@]}" \
        --output "$WORK/runs/gsm8k-$shape" >"$WORK/logs/gsm8k-$shape.log" 2>&1
      rc=$?
      kill "$spid" 2>/dev/null; wait "$spid" 2>/dev/null
      echo "{\"rc\": $rc, \"wall_seconds\": $(( $(date +%s) - t ))}" >"$WORK/runs/gsm8k-$shape.status.json"
      summarize
      say "$shape gsm8k: rc $rc, $(( $(date +%s) - t )) s: $(grep -E 'decode:|problems' "$WORK/logs/gsm8k-$shape.log" | tail -1)"
    fi
  fi
done

summarize
cat "$WORK/summary.txt" | tee -a "$LOG"
(cd "$WORK" && tar czf "$OUTDIR/decode-bench-logs.tar.gz" runs logs --exclude='*.safetensors' 2>/dev/null)
say "done"
