#!/usr/bin/env bash
# prebuilt-pack.sh — packs GPU binaries built on the developer machine (nvcc 13, sm_90a) into the
# git-ignored .devbin/, to be carried to the device machine so that a device call spends no time
# compiling (a cold GPU build of every target takes > 600 s there). Build them first, e.g.
#   cmake --preset gpu -B build/gpu-local -DHDPISSA_MPI=OFF -DHDPISSA_BUILD_TESTS=ON \
#         -DCMAKE_EXE_LINKER_FLAGS="-static-libstdc++ -static-libgcc"
#   cmake --build build/gpu-local -j2 --target hdpissa-train hdpissa-eval ...
# then: scripts/prebuilt-pack.sh build/gpu-local [binary names...]
# On the device: `source scripts/prebuilt-env.sh` (library path), then PREBUILT=.devbin for the
# scripts that take it. libstdc++ / libgcc are linked statically (the device image's may be older);
# libsentencepiece (not in the GPU image) is carried in .devbin/lib; CUDA, NCCL and PCRE2
# (scripts/device-env.sh) come from the device.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${1:?usage: prebuilt-pack.sh BUILD_DIR [binary ...]}"; shift
names=("$@")
[[ ${#names[@]} -gt 0 ]] || names=(hdpissa-train hdpissa-eval hdpissa-generate hdpissa-rank-analysis)
mkdir -p "$ROOT/.devbin/lib"
for n in "${names[@]}"; do
  f="$(find "$BUILD" -type f -name "$n" -perm -u+x | head -1)"
  [[ -n "$f" ]] || { echo "prebuilt-pack: no executable '$n' under $BUILD (build it first)" >&2; exit 2; }
  cp -f "$f" "$ROOT/.devbin/$n"
  strip --strip-debug "$ROOT/.devbin/$n" 2>/dev/null || true
done
sp="$( (/sbin/ldconfig -p 2>/dev/null || ldconfig -p) | awk '/libsentencepiece.so.0 /{print $NF; exit}' || true)"
[[ -n "$sp" ]] || { echo "prebuilt-pack: libsentencepiece.so.0 not found (libsentencepiece0)" >&2; exit 2; }
cp -fL "$sp" "$ROOT/.devbin/lib/libsentencepiece.so.0"
git -C "$ROOT" rev-parse --short HEAD > "$ROOT/.devbin/COMMIT"
if git -C "$ROOT" status --porcelain --untracked-files=no | grep -q .; then echo "+dirty" >> "$ROOT/.devbin/COMMIT"; fi
du -sh "$ROOT/.devbin"; ls "$ROOT/.devbin"
# The packed binaries compressed (52 MiB -> ~11 MiB), so that every .devdata part fits beside them in
# a call's 64 MiB: carry [".devpack", ".devdata"] and unpack on the device with
# `tar xJf .devpack/devbin.tar.xz` (scripts/device-calls/*.sh do; .devpack is git-ignored).
mkdir -p "$ROOT/.devpack"
(cd "$ROOT" && tar cf - .devbin | xz -T0 -6 > .devpack/devbin.tar.xz) && du -sh "$ROOT/.devpack/devbin.tar.xz"
