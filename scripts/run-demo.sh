#!/usr/bin/env bash
# The README's demo: an HD-PiSSA fine-tune of stories260K (a real 260K-parameter LLaMA) on
# GSM8K-train, on the CPU, in a few minutes on 2 cores.
#   1. installs the Debian build dependencies if missing (scripts/install-deps.sh),
#   2. configures and builds hdpissa-train (Release, CUDA off) in $BUILD_DIR (default build-demo/),
#   3. trains with K = 4 virtual adapter groups of rank 4 (K·r = 16 ≤ 32, the smallest layer's
#      min(out, in)), max length 256, printing progress, the held-out loss before and after and a
#      greedy sample, and writes the merged HF checkpoint to runs/demo/ (git-ignored).
# Data: $HDPISSA_DATA, else ../shared/data next to the repository. Extra arguments are passed to
# hdpissa-train (e.g. --max-steps 100, --method pissa). HDPISSA_TRAIN_BIN=<hdpissa-train> skips the
# build (CI passes the binary its test build just made: the CPU path is the same with CUDA linked).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data="${HDPISSA_DATA:-$repo/../shared/data}"
for f in stories260K-hf/model.safetensors stories260K-hf/config.json stories260K-hf/tokenizer.model \
         gsm8k/train.jsonl gsm8k/test.jsonl; do
  if [[ ! -f "$data/$f" ]]; then
    echo "run-demo: expected the shared data folder at '$data' with $f, not found." >&2
    echo "run-demo: set HDPISSA_DATA to the folder holding stories260K-hf/ and gsm8k/." >&2
    exit 1
  fi
done
data="$(cd "$data" && pwd)"

"$repo/scripts/install-deps.sh"

if [[ -n "${HDPISSA_TRAIN_BIN:-}" ]]; then  # an hdpissa-train built already (CI: the test build's)
  train="$HDPISSA_TRAIN_BIN"
  [[ -x "$train" ]] || { echo "run-demo: HDPISSA_TRAIN_BIN: expected an executable hdpissa-train, found '$train'" >&2; exit 1; }
  echo "run-demo: using $train (HDPISSA_TRAIN_BIN)"
else
  build="${BUILD_DIR:-$repo/build-demo}"
  jobs="$(nproc 2>/dev/null || echo 2)"
  echo "run-demo: building hdpissa-train in $build (Release, CUDA off; the first build takes a few minutes)"
  cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=Release -DHDPISSA_CUDA=OFF \
        -DHDPISSA_BUILD_TESTS=OFF -DHDPISSA_BUILD_BENCH=OFF >/dev/null
  cmake --build "$build" --target hdpissa-train -j"$jobs"
  train="$build/examples/llama/hdpissa-train"
fi

out="$repo/runs/demo"
mkdir -p "$repo/runs"
echo "run-demo: training; the merged model goes to $out"
start=$(date +%s)
# One thread: stories260K's matrices are 64 wide, too small for OpenMP to pay off (docs/trainer.md).
"$train" \
  --model "$data/stories260K-hf" \
  --data "$data/gsm8k/train.jsonl" \
  --method hdpissa --groups-per-process 4 --rank 4 \
  --lr 2e-3 --warmup-ratio 0.03 --max-len 256 --micro-batch 2 --grad-accum 1 --max-steps 60 \
  --eval-data "$data/gsm8k/test.jsonl" --eval-examples 32 \
  --sample-prompt "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?" \
  --sample-max-new-tokens 80 \
  --metrics "$repo/runs/demo-metrics.jsonl" \
  --output "$out" --threads "${DEMO_THREADS:-1}" "$@"
echo "run-demo: done in $(( $(date +%s) - start )) s; merged checkpoint: $out (metrics: runs/demo-metrics.jsonl)"
# A loss / learning-rate / throughput plot of the run (matplotlib; the demo does not need it).
plot_python=python3  # the first python3 that has matplotlib (a pyenv one may lack Debian's)
for p in python3 /usr/bin/python3; do
  if command -v "$p" >/dev/null && "$p" -c "import matplotlib" 2>/dev/null; then plot_python="$p"; break; fi
done
if "$plot_python" "$repo/scripts/plot-metrics.py" "$repo/runs/demo-metrics.jsonl" -o "$repo/runs/demo-metrics.png"; then
  echo "run-demo: plot: runs/demo-metrics.png"
else
  echo "run-demo: note: no plot (scripts/plot-metrics.py needs python3-matplotlib)"
fi
