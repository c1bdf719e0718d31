# Sourced by the device scripts (gpu-redesign-check.sh, gpu-launch-check.sh, multi-gpu-check.sh):
# makes PCRE2 (the byte-level BPE tokenizer's regex library, Debian libpcre2-dev) available on a GPU
# machine that lacks it and has no package access, from Debian's .debs carried in .devdata/debs
# (made here with: mkdir -p .devdata/debs && cd .devdata/debs &&
#  apt-get download libpcre2-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3),
# unpacked under /tmp/pt (never over /) and found through PKG_CONFIG_PATH / LD_LIBRARY_PATH.
_hd_debs="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.devdata/debs"
if ! pkg-config --exists libpcre2-8 2>/dev/null && ls "$_hd_debs"/*.deb > /dev/null 2>&1; then
  mkdir -p /tmp/pt && for f in "$_hd_debs"/*.deb; do dpkg -x "$f" /tmp/pt; done
  sed -i 's#^prefix=/usr$#prefix=/tmp/pt/usr#' /tmp/pt/usr/lib/x86_64-linux-gnu/pkgconfig/*.pc
  export PKG_CONFIG_PATH=/tmp/pt/usr/lib/x86_64-linux-gnu/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
  export LD_LIBRARY_PATH=/tmp/pt/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  echo "device-env: PCRE2 $(pkg-config --modversion libpcre2-8) from .devdata/debs"
fi
