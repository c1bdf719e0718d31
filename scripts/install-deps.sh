#!/usr/bin/env bash
# Installs hdpissa's build and test dependencies from Debian 12 packages (skips what is present).
# The CUDA toolkit (nvcc, cuBLAS, cuSOLVER, NCCL) is not a Debian package here: when
# /usr/local/cuda exists the CUDA parts are compiled, otherwise they are skipped.
set -euo pipefail
pkgs=(cmake g++ make ninja-build pkg-config libeigen3-dev doctest-dev libbenchmark-dev
      libboost-mpi-dev libboost-serialization-dev libopenmpi-dev openmpi-bin
      nlohmann-json3-dev libsentencepiece-dev libpcre2-dev libxxhash-dev libcli11-dev
      python3 python3-numpy python3-torch python3-matplotlib)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "install-deps: all dependencies present"
