#!/usr/bin/env bash
# Packs the guest initramfs: the static sandbox-init as /init plus the kernel
# modules from build-kernel.sh. Uncompressed on purpose: decompressing costs
# more boot time under emulation than reading a few extra megabytes.
# Usage: build-initramfs.sh PATH/TO/sandbox-init
source "$(dirname "$0")/lib.sh"
init_bin="$1"
kdir="$ARTIFACTS_DIR/kernel/qemu"
[ -f "$kdir/modules.boot" ] || { echo "run scripts/build-kernel.sh first" >&2; exit 1; }
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{dev,proc,sys,newroot,etc/sandbox,lib/modules}
cp "$init_bin" "$stage/init"
# The kernel opens /dev/console for init's stdio before devtmpfs is mounted.
mknod -m 600 "$stage/dev/console" c 5 1 2>/dev/null || log initramfs "warning: cannot mknod /dev/console (not root); init messages before the control port will be lost"
# Only the boot modules: every byte of the initramfs is unpacked by the guest
# kernel at each boot. Feature modules (net, virtio-fs, loop…) join the archive
# when a feature loads them (scripts/build-kernel.sh keeps them in the cache).
for m in $(cat "$kdir/modules.boot"); do cp "$kdir/modules/$m" "$stage/lib/modules/"; done
sed 's#^#/lib/modules/#' "$kdir/modules.boot" > "$stage/etc/sandbox/modules"
# The NIC driver (dependencies first), loaded by init only when the boot has a network.
: > "$stage/etc/sandbox/modules.net"
for m in failover.ko net_failover.ko virtio_net.ko; do
  grep -qx "$m" "$kdir/modules.extra" || { echo "kernel build lacks $m (scripts/build-kernel.sh EXTRA_MODULES)" >&2; exit 1; }
  cp "$kdir/modules/$m" "$stage/lib/modules/"
  echo "/lib/modules/$m" >> "$stage/etc/sandbox/modules.net"
done
# Virtual filesystem mounts (virtio-fs): loaded by init only when a boot has mounts.
: > "$stage/etc/sandbox/modules.fs"
for m in fuse.ko virtiofs.ko; do
  grep -qx "$m" "$kdir/modules.extra" || { echo "kernel module $m missing from modules.extra (scripts/build-kernel.sh)" >&2; exit 1; }
  cp "$kdir/modules/$m" "$stage/lib/modules/"
  echo "/lib/modules/$m" >> "$stage/etc/sandbox/modules.fs"
done
out="$ARTIFACTS_DIR/kernel/qemu/initramfs.cpio"
# Fixed mtimes and sorted names keep the archive reproducible.
(cd "$stage" && find . -mindepth 1 -exec touch -h -d @0 {} + && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --reproducible -R 0:0 --quiet) > "$out.tmp"
mv "$out.tmp" "$out"
log initramfs "ready: $out ($(du -k "$out" | cut -f1) KiB)"
