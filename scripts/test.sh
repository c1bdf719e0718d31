#!/usr/bin/env bash
# Sets up (Debian packages), builds everything (CPU; CUDA parts compile when nvcc exists) and runs
# the whole CTest suite. GPU tests skip themselves on a machine without a GPU; run them on a GPU
# machine with scripts/gpu-check.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
[[ -d /usr/local/cuda/bin ]] && export PATH="/usr/local/cuda/bin:$PATH"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cmake --preset ci
cmake --build --preset ci
ctest --preset ci
