#!/usr/bin/env bash
# Fetches Debian's cloud kernel for the qemu backend and caches the bzImage plus
# the kernel modules the guest needs, keyed by the .deb's sha256.
# Output: $ARTIFACTS_DIR/kernel/qemu/{vmlinuz,modules/…,modules.order}
source "$(dirname "$0")/lib.sh"

# Modules the guest loads at boot (dependencies are resolved from modules.dep).
# Kept minimal: every module costs boot time under TCG emulation.
BOOT_MODULES=(virtio_pci virtio_console virtio_blk)
# Modules init loads only when a feature asks for them.
EXTRA_MODULES=(virtio_net virtiofs fuse loop overlay erofs)

state="$CACHE_DIR/kernel/current"
deb_name="$(cat "$state" 2>/dev/null || true)"
if [ -z "$deb_name" ] || [ ! -f "$CACHE_DIR/kernel/$deb_name/done" ]; then
  need_debs kmod
  pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  if [ -z "$pkg" ]; then
    log kernel "apt lists are empty; running apt-get update"
    apt-get update -q >&2 || sudo apt-get update -q >&2
    pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  fi
  tmp=$(mktemp -d "$CACHE_DIR/kernel-tmp.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  log kernel "downloading $pkg"
  download_kernel() { cd "$tmp" && { apt-get download "$pkg" 2>/dev/null || { chmod 777 . && apt-get download "$pkg"; }; }; }
  progress --watch "$tmp" "download $pkg" download_kernel
  deb=$(ls "$tmp"/*.deb)
  key=$(sha256_of "$deb" | cut -c1-16)
  dest="$CACHE_DIR/kernel/$key"
  if [ ! -f "$dest/done" ]; then
    log kernel "extracting $(basename "$deb")"
    dpkg-deb -x "$deb" "$tmp/x"
    kver=$(ls "$tmp/x/lib/modules")
    depmod -b "$tmp/x" "$kver"
    rm -rf "$dest"; mkdir -p "$dest/modules"
    cp "$tmp/x/boot/vmlinuz-$kver" "$dest/vmlinuz"
    cp "$tmp/x/boot/config-$kver" "$dest/config"
    echo "$kver" > "$dest/release"
    depfile="$tmp/x/lib/modules/$kver/modules.dep"
    # order_for NAME: prints module paths, dependencies first, each once.
    declare -A seen=()
    order_for() {
      local line path deps d
      line=$(grep -E "/$1\.ko(\.[a-z]+)?:" "$depfile" | head -1)
      [ -n "$line" ] || { echo "module $1 not found in $kver" >&2; exit 1; }
      path=${line%%:*}; deps=${line#*:}
      # modules.dep lists dependencies innermost last: load them in reverse.
      for d in $(echo $deps | tr ' ' '\n' | tac); do order_for "$(basename "${d%%.ko*}")"; done
      if [ -z "${seen[$path]:-}" ]; then seen[$path]=1; echo "$path"; fi
    }
    : > "$dest/modules.boot"; : > "$dest/modules.extra"
    for m in "${BOOT_MODULES[@]}"; do order_for "$m" >> "$dest/modules.boot"; done
    for m in "${EXTRA_MODULES[@]}"; do order_for "$m" >> "$dest/modules.extra"; done
    for f in $(cat "$dest/modules.boot" "$dest/modules.extra"); do
      cp "$tmp/x/lib/modules/$kver/$f" "$dest/modules/$(basename "$f")"
    done
    # Lists hold bare file names; init finds them under /lib/modules.
    sed -i 's#.*/##' "$dest/modules.boot" "$dest/modules.extra"
    touch "$dest/done"
  fi
  mkdir -p "$CACHE_DIR/kernel"; echo "$key" > "$state"
  deb_name="$key"
else
  log kernel "cached ($deb_name)"
fi
src="$CACHE_DIR/kernel/$deb_name"
out="$ARTIFACTS_DIR/kernel/qemu"
mkdir -p "$out/modules"
place "$src/vmlinuz" "$out/vmlinuz"
for f in "$src"/modules/*; do place "$f" "$out/modules/$(basename "$f")"; done
cp "$src/modules.boot" "$src/modules.extra" "$src/release" "$out/"
log kernel "ready: $out (Linux $(cat "$src/release"))"
