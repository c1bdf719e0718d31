#!/usr/bin/env bash
# prebuilt-suites.sh — on the device machine, run every GPU test binary packed in .devbin
# (scripts/prebuilt-pack.sh) with the data carried in .devdata, one log each under $OUT/suites, and
# print each suite's doctest summary. Exit status: non-zero if a suite failed or is missing.
#
#   source scripts/prebuilt-env.sh && scripts/prebuilt-suites.sh          # every *_tests in .devbin
#   SUITES="hdpissa_llama_decode_cuda_tests" scripts/prebuilt-suites.sh   # some of them
#   ARGS="--test-case=*fp8*" SUITES=hdpissa_cuda_tests scripts/prebuilt-suites.sh
# Data: HDPISSA_DATA / HDPISSA_GPU_TEST_DATA default to .devdata (stories260K-hf, the tokenizer);
# scratch in HDPISSA_GPU_TEST_SCRATCH (/tmp/hdpissa-suites).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/.devbin"
OUTDIR="${OUT:-/tmp}/suites"
mkdir -p "$OUTDIR"
export HDPISSA_DATA="${HDPISSA_DATA:-$ROOT/.devdata}"
export HDPISSA_GPU_TEST_DATA="${HDPISSA_GPU_TEST_DATA:-$ROOT/.devdata}"
export HDPISSA_GPU_TEST_SCRATCH="${HDPISSA_GPU_TEST_SCRATCH:-/tmp/hdpissa-suites}"
mkdir -p "$HDPISSA_GPU_TEST_SCRATCH"
suites="${SUITES:-$(cd "$BIN" 2>/dev/null && ls -- *_tests 2>/dev/null | tr '\n' ' ')}"
[[ -n "${suites// /}" ]] || { echo "prebuilt-suites: no *_tests binaries in $BIN (run scripts/prebuilt-pack.sh here first)"; exit 2; }
rc=0
for s in $suites; do
  if [[ ! -x "$BIN/$s" ]]; then echo "$s: MISSING from $BIN"; rc=1; continue; fi
  t0=$(date +%s)
  # shellcheck disable=SC2086
  "$BIN/$s" --no-intro ${ARGS:-} >"$OUTDIR/$s.log" 2>&1
  r=$?
  summary="$(grep -E '^\[doctest\] (test cases|assertions)' "$OUTDIR/$s.log" | tr -s ' ' | tr '\n' ';')"
  echo "$s: rc $r, $(( $(date +%s) - t0 )) s; $summary"
  if (( r != 0 )); then
    rc=1
    grep -E -B2 -A6 'ERROR|THREW|FATAL' "$OUTDIR/$s.log" | head -40
  fi
done
exit $rc
