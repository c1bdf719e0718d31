#!/usr/bin/env bash
# gpu-check.sh — configure + build (Release, sm_90a) the CUDA component, run every `gpu`-labelled
# CTest test (tests/cuda, and any other suite labelled gpu, e.g. tests/nccl), then the CUDA
# micro-benchmarks and end-to-end drivers. Logs and JSON go to $OUT when set (else build-gpu/out);
# a short summary table is printed last. Exit status: non-zero if the build or a test failed.
#
#   scripts/gpu-check.sh                      # everything
#   BUILD_DIR=... JOBS=16 scripts/gpu-check.sh
#   PREBUILT=dir scripts/gpu-check.sh         # skip configure/build: run binaries found in dir
#                                             # (hdpissa_cuda_tests, bench_cuda_micro, bench_cuda_e2e)
#   BENCH_FILTER=regex  E2E_ARGS="svd init7b dwu7b"  STORIES=path/model.safetensors  SKIP_BENCH=1
#   SKIP_HF=1                                 # skip scripts/hf-check.sh (transformers load/loss check)
set -uo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/device-env.sh"  # PCRE2 on a GPU image without it
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build-gpu}"
OUTDIR="${OUT:-$BUILD_DIR/out}"
JOBS="${JOBS:-$(nproc)}"
mkdir -p "$OUTDIR"
status=0
declare -a SUMMARY

note() { SUMMARY+=("$1"); }

if [[ -z "${PREBUILT:-}" ]]; then
  cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a \
        -DHDPISSA_CUDA=ON ${CMAKE_ARGS:-} >"$OUTDIR/configure.log" 2>&1 \
    || { echo "configure failed (see $OUTDIR/configure.log)"; tail -30 "$OUTDIR/configure.log"; exit 2; }
  # Build the gpu-labelled tests and the CUDA benchmarks (plus whatever else the tree defines).
  # Keep going past other components' failures so every gpu test that did build still runs.
  if cmake --build "$BUILD_DIR" -j "$JOBS" -- -k >"$OUTDIR/build.log" 2>&1; then
    note "build            | ok ($BUILD_DIR)"
  else
    status=1
    note "build            | FAILED (see build.log): $(grep -E ' error|Error [0-9]' "$OUTDIR/build.log" | head -3 | tr '\n' ' ' | cut -c1-200)"
  fi
  (cd "$BUILD_DIR" && ctest -L gpu --output-on-failure --output-junit "$OUTDIR/ctest-gpu.xml") >"$OUTDIR/ctest-gpu.log" 2>&1
  rc=$?
  [[ $rc -ne 0 ]] && status=1
  note "ctest -L gpu     | $(grep -E 'tests passed|tests failed' "$OUTDIR/ctest-gpu.log" | tail -1) (rc $rc)"
  TEST_BIN="$BUILD_DIR/tests/cuda/hdpissa_cuda_tests"
  MICRO="$BUILD_DIR/bench/micro/bench_cuda_micro"
  E2E="$BUILD_DIR/bench/micro/bench_cuda_e2e"
else
  TEST_BIN="$PREBUILT/hdpissa_cuda_tests"; MICRO="$PREBUILT/bench_cuda_micro"; E2E="$PREBUILT/bench_cuda_e2e"
  "$TEST_BIN" --no-intro >"$OUTDIR/tests-gpu.log" 2>&1
  rc=$?
  [[ $rc -ne 0 && $rc -ne 77 ]] && status=1
  note "cuda tests       | $(grep -E '^\[doctest\] (test cases|assertions)' "$OUTDIR/tests-gpu.log" | tr '\n' ' ') (rc $rc)"
fi

if [[ -z "${SKIP_BENCH:-}" ]]; then
  if [[ -x "$MICRO" ]]; then
    "$MICRO" --benchmark_filter="${BENCH_FILTER:-.}" --benchmark_out="$OUTDIR/bench_micro.json" \
      --benchmark_out_format=json >"$OUTDIR/bench_micro.log" 2>&1 || status=1
    note "bench_cuda_micro | $(grep -c '^BM_' "$OUTDIR/bench_micro.log") results -> bench_micro.json"
  fi
  if [[ -x "$E2E" ]]; then
    stories="${STORIES:-$ROOT/.devdata/stories260K-hf/model.safetensors}"
    [[ -f "$stories" ]] && sarg=(--stories "$stories") || sarg=()
    "$E2E" ${E2E_ARGS:-} "${sarg[@]}" >"$OUTDIR/bench_e2e.log" 2>&1 || status=1
    grep '^JSON ' "$OUTDIR/bench_e2e.log" | sed 's/^JSON //' >"$OUTDIR/bench_e2e.jsonl"
    note "bench_cuda_e2e   | $(grep -c '^JSON ' "$OUTDIR/bench_e2e.log") records -> bench_e2e.jsonl"
  fi
fi

# transformers load/loss check of checkpoints our trainer writes (CPU and --device cuda): scripts/hf-check.sh
if [[ -z "${SKIP_HF:-}" ]]; then
  BUILD_DIR="$BUILD_DIR" BIN="${PREBUILT:-$BUILD_DIR/examples/llama}" "$ROOT/scripts/hf-check.sh" >"$OUTDIR/hf-check.log" 2>&1
  rc=$?
  [[ $rc -ne 0 && $rc -ne 77 ]] && status=1
  note "hf-check         | $(grep -E '^hf-check ' "$OUTDIR/hf-check.log" | tr '\n' ' ') (rc $rc)"
fi

echo
echo "==================== gpu-check summary ===================="
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/gpu              | /'
for s in "${SUMMARY[@]}"; do echo "$s"; done
if [[ -f "$OUTDIR/bench_micro.json" ]] && command -v python3 >/dev/null; then
  python3 - "$OUTDIR/bench_micro.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"{'micro-benchmark':52s} {'ms':>9s} {'TFLOP/s':>8s} {'%ceil':>6s} {'GB/s':>8s} {'%ceil':>6s}")
for b in d["benchmarks"]:
    if b.get("run_type") == "aggregate": continue
    t = b.get("real_time", 0); tf = b.get("TFLOPs", 0); gb = b.get("GBps", 0)
    ct = b.get("ceil_TFLOPs", 0); cg = b.get("ceil_GBps", 0)
    pt = f"{100*tf/ct:5.0f}%" if ct else "     -"
    pg = f"{100*gb/cg:5.0f}%" if cg and gb else "     -"
    print(f"{(b.get('label') or b['name'])[:52]:52s} {t:9.3f} {tf:8.1f} {pt:>6s} {gb:8.0f} {pg:>6s}")
PY
fi
[[ -f "$OUTDIR/bench_e2e.log" ]] && grep -E '^(svd|init7b|dwu7b|stories)' "$OUTDIR/bench_e2e.log"
echo "logs: $OUTDIR   status: $status"
exit $status
