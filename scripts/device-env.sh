# Sourced by the device scripts (gpu-*-check.sh, throughput.sh, multi-gpu-check.sh): makes the
# Debian packages the GPU image lacks (it has no package access) available from the .debs carried
# in .devdata/debs: PCRE2 (the byte-level BPE tokenizer's regex library, libpcre2-dev), xxHash
# (checkpoint manifests, libxxhash-dev, header-only use) and CLI11 (command lines, libcli11-dev).
# Made here with: mkdir -p .devdata/debs && cd .devdata/debs && apt-get download libpcre2-dev
#   libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3 libxxhash-dev libxxhash0 libcli11-dev
# Unpacked under /tmp/pt (never over /), found through PKG_CONFIG_PATH / LD_LIBRARY_PATH / CPATH.
_hd_debs="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.devdata/debs"
if { ! pkg-config --exists libpcre2-8 2>/dev/null || ! [ -f /usr/include/xxhash.h ] || ! [ -f /usr/include/CLI/CLI.hpp ]; } && ls "$_hd_debs"/*.deb > /dev/null 2>&1; then
  mkdir -p /tmp/pt && for f in "$_hd_debs"/*.deb; do dpkg -x "$f" /tmp/pt; done
  sed -i 's#^prefix=/usr$#prefix=/tmp/pt/usr#' /tmp/pt/usr/lib/x86_64-linux-gnu/pkgconfig/*.pc
  export PKG_CONFIG_PATH=/tmp/pt/usr/lib/x86_64-linux-gnu/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
  export LD_LIBRARY_PATH=/tmp/pt/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  export CPATH=/tmp/pt/usr/include${CPATH:+:$CPATH}
  export CMAKE_PREFIX_PATH=/tmp/pt/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}
  echo "device-env: PCRE2 $(pkg-config --modversion libpcre2-8), xxHash, CLI11 from .devdata/debs (/tmp/pt)"
fi
