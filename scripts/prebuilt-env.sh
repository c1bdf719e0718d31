# Sourced on the device machine before running binaries packed by scripts/prebuilt-pack.sh (.devbin):
# puts .devbin/lib (libsentencepiece) and the image's NCCL on LD_LIBRARY_PATH and checks that every
# packed binary starts; sets PREBUILT_OK=1 when they do (else the caller builds on the device).
_hd_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$_hd_root/scripts/device-env.sh"
_hd_nccl="$( (/sbin/ldconfig -p 2>/dev/null || ldconfig -p 2>/dev/null) | awk '/libnccl.so.2 /{print $NF; exit}')"
[[ -z "$_hd_nccl" ]] && _hd_nccl="$(find / -xdev -name 'libnccl.so.2' -not -path '/proc/*' 2>/dev/null | head -1)"
export LD_LIBRARY_PATH="$_hd_root/.devbin/lib${_hd_nccl:+:$(dirname "$_hd_nccl")}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
PREBUILT_OK=0
if [[ -x "$_hd_root/.devbin/hdpissa-train" ]]; then
  PREBUILT_OK=1
  for _hd_b in "$_hd_root"/.devbin/*; do
    [[ -f "$_hd_b" && -x "$_hd_b" ]] || continue
    if ldd "$_hd_b" | grep -q "not found"; then
      echo "prebuilt-env: $(basename "$_hd_b") misses: $(ldd "$_hd_b" | grep 'not found' | tr -s ' \t' ' ' | tr '\n' ';')"; PREBUILT_OK=0
    fi
  done
  "$_hd_root/.devbin/hdpissa-train" --version >/dev/null 2>&1 || { echo "prebuilt-env: .devbin/hdpissa-train --version failed"; PREBUILT_OK=0; }
fi
echo "prebuilt-env: PREBUILT_OK=$PREBUILT_OK (.devbin at $(cat "$_hd_root/.devbin/COMMIT" 2>/dev/null | tr '\n' ' '); nccl ${_hd_nccl:-not found})"
