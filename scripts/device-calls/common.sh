# Sourced first by every call script here (session 12's device calls, and c4 of session 13; run from the repository root on
# the GPU machine with carry [".devpack", ".devdata"]): c0 decode + model suites, the 7B decode bench,
# the 34B fit (ran); c4 / c5 (session 13: suites, then the micro-batch-2 memory; plans); c2 7B throughput 8 x 512 (bf16 + fp8) and 2 x 512, the step profile (ran);
# c1 every suite then the fit, c3 the decode bench at both shapes then the FP8 deviation (plans, not
# run in this form). Unpacks the binaries (scripts/prebuilt-pack.sh), sets the clock and the library
# path; each call keeps its outputs in /tmp and returns at most 8 files under $OUT.
set -uo pipefail
tar xJf .devpack/devbin.tar.xz
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
END=${END_S:-545}
source scripts/prebuilt-env.sh
# the start-up lines of every trainer log under the given directories (docs/trainer.md "Start-up")
startup_lines() { grep -rh --include='*.log' -E "loaded .* in|engine ready|engine: uploading" "$@" 2>/dev/null; }
# run_suites DIR SUITE:LIMIT_S ...: each prebuilt GPU test suite under its time limit, its summary and
# rc appended to DIR/suites.txt, then the file printed and copied to $OUT.
run_suites() {
  local dir=$1 t s lim; shift
  for t in "$@"; do
    s=${t%%:*}; lim=${t##*:}
    OUT=$dir HDPISSA_GPU_TEST_SCRATCH=/tmp/hs SUITES=$s timeout "$lim" scripts/prebuilt-suites.sh >> "$dir/suites.txt" 2>&1
    echo "$s rc $? at $(el) s" >> "$dir/suites.txt"
  done
  cat "$dir/suites.txt"; cp "$dir/suites.txt" "$OUT/"
}
# run_profile DIR WORK NAME VAR=value ...: one scripts/profile-step.sh run (bare model vs the
# trainer's --profile, VAR=value its settings) under the call's deadline, output in DIR/NAME; its
# table and the host-time lines go to $OUT/profile-NAME.md and are printed.
run_profile() {
  local dir=$1 work=$2 name=$3 t; shift 3
  mkdir -p "$dir"
  t=$(( END - 5 - $(el) )); (( t > 30 )) || { echo "$name: skipped (no time) at $(el) s"; return; }
  env "$@" OUT=$dir/$name WORK=$work PREBUILT=$PWD/.devbin BARE_ARGS="--prompt-fraction 0.2" \
    timeout $t scripts/profile-step.sh > $dir/$name.txt 2>&1
  echo "$name rc $? at $(el) s"
  { echo "== $name: $*"; cat $dir/$name/profile.md
    for f in $dir/$name/*.log; do echo "$(basename $f .log): $(grep -h "host time" $f)"; done; } > $OUT/profile-$name.md 2>/dev/null
  cat $OUT/profile-$name.md
}
# throughput DIR NAME VAR=value ...: one scripts/throughput.sh run (VAR=value its settings: SHAPES,
# MICRO_BATCHES, OURS_CONFIGS, PEFT_METHODS, …) under the call's deadline, output in DIR/NAME; its
# table goes to $OUT/NAME.md and its ours / PEFT rows are printed.
throughput() {
  local dir=$1 name=$2; shift 2
  env "$@" OUT=$dir/$name WORK=/tmp/tpt PREBUILT=$PWD/.devbin OURS_STEPS=6 \
    DEADLINE_S=$(( END - 10 - $(el) )) scripts/throughput.sh > $dir/$name.txt 2>&1
  cp $dir/$name/throughput.md $OUT/$name.md 2>/dev/null; echo "$name done at $(el) s"
  grep -E "^\| (\*\*)?(ours|peft)|^#" $dir/$name/throughput.md | head -8
}
# run_cases DIR NAME BINARY LIMIT_S FILTER: some test cases of a prebuilt GPU suite (doctest -tc
# FILTER) with the data carried in .devdata, under the time limit; log DIR/NAME.txt, its errors and
# summary printed, the log copied to $OUT.
run_cases() {
  local dir=$1 name=$2 bin=$3 lim=$4 filter=$5 rc
  mkdir -p /tmp/hs
  HDPISSA_DATA=$PWD/.devdata HDPISSA_GPU_TEST_DATA=$PWD/.devdata HDPISSA_GPU_TEST_SCRATCH=/tmp/hs \
    timeout "$lim" ".devbin/$bin" --no-intro -tc="$filter" > "$dir/$name.txt" 2>&1
  rc=$?
  echo "$name ($bin -tc=\"$filter\") rc $rc at $(el) s"
  grep -E "ERROR|THREW|test cases|assertions" "$dir/$name.txt" | head -20; cp "$dir/$name.txt" "$OUT/"
}
# decode_prompts FILE: decode-bench.sh's prompts (BATCH 64, PROMPT_LEN 96:224, seed 0) as JSONL ids.
decode_prompts() {
  python3 - "$1" <<'PY'
import json, random, sys
rng = random.Random(0)
with open(sys.argv[1], "w") as f:
    for _ in range(64):
        n = rng.randint(96, 224)
        f.write(json.dumps({"ids": [1] + [rng.randrange(3, 32000) for _ in range(n - 1)]}) + "\n")
PY
}
# decode_gen DIR MODEL PROMPTS NAME VAR=value ...: one hdpissa-generate run (batch 64, 256 new tokens,
# no stop) with VAR=value set; the ms per decode step appended to $OUT/decode-ab.txt and printed;
# completions in DIR/out-NAME.jsonl.
decode_gen() {
  local dir=$1 model=$2 prompts=$3 name=$4; shift 4
  env "$@" timeout 60 .devbin/hdpissa-generate --device cuda --dtype bf16 --model "$model" \
    --tokenizer .devdata/llama2_tokenizer/tokenizer.model --input "$prompts" --output "$dir/out-$name.jsonl" \
    --batch-size 64 --max-new-tokens 256 --no-stop --warmup > "$dir/g-$name.log" 2>&1
  local line=$(grep -o "decode [0-9]* tokens in [0-9]* steps, [0-9.]* tok/s" "$dir/g-$name.log" | tail -1)
  python3 -c "
import re,sys; m=re.search(r'decode (\d+) tokens in (\d+) steps, ([0-9.]+) tok/s', sys.argv[2])
print(f'{sys.argv[1]:>12}:', (f'{float(m.group(3)):8.0f} decode tok/s  {int(m.group(1))/float(m.group(3))/int(m.group(2))*1e3:7.3f} ms/step' if m else 'FAILED'))" "$name" "$line" | tee -a "$OUT/decode-ab.txt"
}
