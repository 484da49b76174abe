#!/usr/bin/env bash
# Builds the read-only built-in root filesystem images from Debian's archive
# (no Docker): ext4 made with `mkfs.ext4 -d`, shipped as compressed qcow2.
#
#   debian:12  Debian bookworm minbase + a few tools   (4 GiB virtual size)
#   busybox    Debian's busybox-static + applet links   (256 MiB virtual size)
#
# The images carry no init and start no services: the project's init runs from
# the initramfs and chroots into them. They only need empty mount points,
# /etc/passwd, /etc/group and /etc/hosts.
#
# Usage: build-images.sh [ARTIFACTS_DIR]
#   ARTIFACTS_DIR  default: platform-packages/linux-x64-gnu/artifacts
#   SANDBOX_IMAGES comma-separated names to build (default: debian:12,busybox)
#   SANDBOX_CACHE_DIR  cache root (default: ~/.cache/torkbot-sandbox)
#
# Output: ARTIFACTS_DIR/images/{debian-12,busybox}.qcow2 (hard links into the
# cache, or copies across filesystems) and ARTIFACTS_DIR/images/catalog.json.
#
# Cache: $SANDBOX_CACHE_DIR/images/<slug>-<key>/ where <key> hashes the recipe
# (the functions below that build the image, its package list and, for
# busybox, the busybox-static version). An entry is complete once its `done`
# marker exists; entries are built in a temp dir and renamed into place, so an
# interrupted build never leaves a half-made entry. Needs root (mmdebstrap's
# root mode, and root-owned files for mkfs.ext4 -d).
source "$(dirname "$0")/lib.sh"

if [ $# -ge 1 ] && [ -n "$1" ]; then ARTIFACTS_DIR="$(realpath -m "$1")"; fi
IMAGES_CACHE="$CACHE_DIR/images"
OUT_DIR="$ARTIFACTS_DIR/images"

if [ "$(id -u)" -ne 0 ]; then
  echo "build-images.sh must run as root (mmdebstrap root mode; root-owned image files)" >&2
  exit 1
fi

# Bump to force a rebuild of every image when something outside the recipe
# functions changes what ends up in them.
RECIPE_VERSION=1

DEBIAN_12_PACKAGES=(ca-certificates curl git python3 nodejs procps iproute2 netcat-openbsd
  bind9-dnsutils openssl xz-utils)
DEBIAN_12_SUITES=(
  "deb http://deb.debian.org/debian bookworm main"
  "deb http://deb.debian.org/debian bookworm-updates main"
  "deb http://deb.debian.org/debian-security bookworm-security main"
)

# ---------------------------------------------------------------------------
# Helpers

HEARTBEAT_PID=""
STEP_PID=""
TMP_ENTRY=""

# Removes a build dir, first unmounting anything an interrupted mmdebstrap
# may have left mounted below it.
remove_tree() {
  local d="$1"
  [ -e "$d" ] || return 0
  awk -v p="$d/" 'index($2, p) == 1 { print $2 }' /proc/self/mounts | sort -r |
    while read -r m; do umount -l "$m" 2>/dev/null || true; done
  rm -rf --one-file-system "$d"
}

# Stops a process and its descendants (a step's job runs mmdebstrap, apt…).
KILLED=()
kill_tree() {
  local pid="$1" child
  kill -STOP "$pid" 2>/dev/null || return 0
  KILLED+=("$pid")
  for child in $(pgrep -P "$pid"); do kill_tree "$child"; done
  kill -TERM "$pid" 2>/dev/null
  kill -CONT "$pid" 2>/dev/null
}

on_exit() {
  set +e
  [ -n "$HEARTBEAT_PID" ] && kill "$HEARTBEAT_PID" 2>/dev/null
  if [ -n "$STEP_PID" ]; then
    log images "interrupted: stopping the running step"
    kill_tree "$STEP_PID"
    wait "$STEP_PID" 2>/dev/null
    # Let mmdebstrap finish its own unmounting (up to 20 s).
    local i p
    for i in $(seq 200); do
      for p in "${KILLED[@]}"; do kill -0 "$p" 2>/dev/null && break; p=""; done
      [ -z "$p" ] && break
      sleep 0.1
    done
  fi
  [ -n "$TMP_ENTRY" ] && remove_tree "$TMP_ENTRY"
  return 0
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# step [--watch PATH] LABEL CMD… — runs CMD with its output captured and the
# progress display of scripts/progress.sh (a live status line on a terminal,
# one line per step elsewhere, the output's tail on failure). CMD runs as a
# background job so that `set -e` stays in force inside shell functions and the
# EXIT trap can stop it.
step() {
  local watch=""
  if [ "${1:-}" = --watch ]; then watch="$2"; shift 2; fi
  local label="images: $1"; shift
  local t0=$SECONDS rc=0 logf
  logf=$(mktemp "${TMPDIR:-/tmp}/sandbox-step.XXXXXX")
  if progress_live; then
    (
      trap 'kill "$s" 2>/dev/null; exit 0' TERM
      while :; do
        progress_status "$label" "$t0" "$logf" "$watch"
        sleep 0.25 & s=$!
        wait "$s"
      done
    ) &
    HEARTBEAT_PID=$!
  fi
  "$@" >"$logf" 2>&1 &
  STEP_PID=$!
  wait "$STEP_PID" || rc=$?
  STEP_PID=""
  if [ -n "$HEARTBEAT_PID" ]; then kill "$HEARTBEAT_PID" 2>/dev/null; wait "$HEARTBEAT_PID" 2>/dev/null || true; fi
  HEARTBEAT_PID=""
  progress_end "$label" "$t0" "$rc" "$logf"
  return "$rc"
}

slug_of() { printf '%s' "$1" | tr -c 'A-Za-z0-9._\n-' '-'; }

# ---------------------------------------------------------------------------
# Recipe functions. Their text (declare -f) is part of each image's cache key.

# Mount points, identity files and the rest both images share.
image_skeleton() {
  local root="$1"
  mkdir -p "$root"/{proc,sys,dev,run,tmp,etc,root,var/tmp,mnt,workspace}
  # Mount points stay empty: the guest mounts proc/sysfs/devtmpfs/tmpfs there,
  # and /workspace is the conventional target of a virtual filesystem mount.
  find "$root"/proc "$root"/sys "$root"/dev "$root"/run "$root"/tmp "$root"/var/tmp "$root"/mnt "$root"/workspace \
    -mindepth 1 -delete
  chmod 0755 "$root"/{proc,sys,dev,run,etc,mnt,workspace}
  chmod 1777 "$root"/tmp "$root"/var/tmp
  chmod 0700 "$root"/root
  printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' > "$root/etc/hosts"
  # Present (empty) so the init can bind-mount its own over a read-only root.
  rm -f "$root/etc/resolv.conf"
  install -m 0644 /dev/null "$root/etc/resolv.conf"
  rm -f "$root/etc/hostname"
  [ -e "$root/etc/mtab" ] || [ -L "$root/etc/mtab" ] || ln -s ../proc/self/mounts "$root/etc/mtab"
  grep -q '^root:' "$root/etc/passwd"
  grep -q '^root:' "$root/etc/group"
  # No init and nothing that starts services.
  local f
  for f in sbin/init usr/sbin/init lib/systemd/systemd usr/lib/systemd/systemd; do
    if [ -e "$root/$f" ] || [ -L "$root/$f" ]; then echo "unexpected $f in image" >&2; return 1; fi
  done
}

# ext4 (mkfs.ext4 -d, root-owned, journal kept) converted to compressed qcow2.
make_qcow2() {
  local root="$1" size="$2" out="$3"
  local raw="$out.raw"
  rm -f "$raw"
  truncate -s "$size" "$raw"
  # lazy_itable_init=0: the inode tables are zeroed now (free in a sparse file,
  # skipped by qemu-img) rather than by the guest kernel on a writable mount.
  mkfs.ext4 -q -F -t ext4 -b 4096 -L sandbox-root \
    -E root_owner=0:0,lazy_itable_init=0 -d "$root" "$raw"
  local fsck
  fsck=$(e2fsck -fn "$raw" 2>&1) || { echo "$fsck" >&2; return 1; }
  qemu-img convert -c -f raw -O qcow2 "$raw" "$out"
  rm -f "$raw"
  qemu-img check -q "$out"
}

recipe_debian_12() {
  local root="$1"
  local include
  include="$(IFS=,; echo "${DEBIAN_12_PACKAGES[*]}")"
  mmdebstrap --mode=root --variant=minbase --format=directory \
    --include="$include" \
    --aptopt='Acquire::Languages "none"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/groff/*' \
    --dpkgopt='path-exclude=/usr/share/lintian/*' \
    --dpkgopt='path-exclude=/usr/share/linda/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    bookworm "$root" "${DEBIAN_12_SUITES[@]}"
  # mmdebstrap already dropped apt lists and the .deb cache; drop the rest of
  # the build's leftovers.
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
  rm -f "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old
  find "$root/var/log" -type f -delete
  # Smoke test inside the tree (absolute symlinks such as alternatives only
  # resolve there), before image_skeleton empties /dev.
  chroot "$root" /bin/sh -ec '
    for c in sh ls cat curl git python3 ps ip nc dig openssl xz; do
      command -v "$c" >/dev/null || { echo "debian:12: $c is missing" >&2; exit 1; }
    done
    test -s /etc/ssl/certs/ca-certificates.crt
    python3 -c "import ssl, json, sqlite3"
    curl --version >/dev/null'
  image_skeleton "$root"
}

recipe_busybox() {
  local root="$1" deb="$2"
  local x="$root.deb"
  mkdir -p "$root" "$x"
  dpkg-deb -x "$deb" "$x"
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc}
  install -m 0755 "$x/bin/busybox" "$root/bin/busybox"
  rm -rf "$x"
  # What `busybox --install -s` would do inside the guest, done here; minus
  # init/linuxrc: the image has no init of its own.
  local p
  for p in $("$root/bin/busybox" --list-full); do
    case "$p" in sbin/init|linuxrc) continue ;; esac
    mkdir -p "$root/$(dirname "$p")"
    [ -e "$root/$p" ] || [ -L "$root/$p" ] || ln -s /bin/busybox "$root/$p"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
    > "$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
  image_skeleton "$root"
  for p in bin/sh bin/ls bin/cat; do
    [ -L "$root/$p" ] || { echo "busybox: missing /$p" >&2; return 1; }
  done
}

# ---------------------------------------------------------------------------
# Per-image parameters.

busybox_deb=""
busybox_version=""

# Resolves (and caches) the busybox-static .deb from the host's apt sources.
resolve_busybox() {
  [ -n "$busybox_deb" ] && return 0
  busybox_version=$(apt-cache policy busybox-static 2>/dev/null | awk '/Candidate:/ { print $2 }')
  if [ -z "$busybox_version" ] || [ "$busybox_version" = "(none)" ]; then
    log images "busybox: apt lists are empty; running apt-get update"
    apt-get update -q >&2
    busybox_version=$(apt-cache policy busybox-static | awk '/Candidate:/ { print $2 }')
  fi
  [ -n "$busybox_version" ] && [ "$busybox_version" != "(none)" ] ||
    { echo "busybox-static is not available from the configured apt sources" >&2; return 1; }
  local dir="$IMAGES_CACHE/debs/busybox-static_$(slug_of "$busybox_version")"
  busybox_deb=$(ls "$dir"/busybox-static_*.deb 2>/dev/null | head -n1 || true)
  if [ -z "$busybox_deb" ]; then
    log images "busybox: downloading busybox-static $busybox_version"
    local dl
    dl=$(mktemp -d "$IMAGES_CACHE/.dl-XXXXXX")
    (cd "$dl" && apt-get download -q -o APT::Sandbox::User=root "busybox-static=$busybox_version" >&2)
    mkdir -p "$dir"
    mv "$dl"/busybox-static_*.deb "$dir/"
    rm -rf "$dl"
    busybox_deb=$(ls "$dir"/busybox-static_*.deb | head -n1)
  fi
}

image_known() { case "$1" in debian:12|busybox) return 0 ;; *) return 1 ;; esac; }

image_size() {
  case "$1" in
    debian:12) echo $((4 * 1024 * 1024 * 1024)) ;;
    busybox) echo $((256 * 1024 * 1024)) ;;
  esac
}

image_description() {
  case "$1" in
    debian:12) echo "Debian 12 (bookworm) minbase with sh, coreutils, $(IFS=,; echo "${DEBIAN_12_PACKAGES[*]}" | sed 's/,/, /g')" ;;
    busybox) echo "BusyBox from Debian's busybox-static $busybox_version: one static binary with applet symlinks, for fast tests" ;;
  esac
}

# Everything that decides an image's content.
image_recipe() {
  echo "torkbot-sandbox images recipe v$RECIPE_VERSION"
  echo "name=$1 size=$(image_size "$1")"
  declare -f image_skeleton make_qcow2
  case "$1" in
    debian:12)
      declare -f recipe_debian_12
      printf 'package %s\n' "${DEBIAN_12_PACKAGES[@]}"
      printf 'source %s\n' "${DEBIAN_12_SUITES[@]}"
      ;;
    busybox)
      declare -f recipe_busybox
      echo "busybox-static=$busybox_version"
      ;;
  esac
}

# ---------------------------------------------------------------------------
# Build (or reuse) one image; sets ENTRY to the cache entry's path. (Not a
# command substitution: bash turns `set -e` off in those.)

build_image() {
  local name="$1"
  local slug t0=$SECONDS
  slug=$(slug_of "$name")
  [ "$name" = busybox ] && resolve_busybox
  local key entry
  ENTRY=""
  key=$(image_recipe "$name" | sha256sum | cut -c1-16)
  entry="$IMAGES_CACHE/$slug-$key"
  if [ -f "$entry/done" ]; then
    log images "$name: cached ($entry)"
    ENTRY="$entry"; return 0
  fi

  # One builder per image at a time; whoever waited may find it done.
  local lockfd
  exec {lockfd}>"$IMAGES_CACHE/.lock-$slug"
  flock "$lockfd"
  if [ -f "$entry/done" ]; then
    exec {lockfd}>&-
    log images "$name: cached ($entry)"
    ENTRY="$entry"; return 0
  fi
  local stale
  for stale in "$IMAGES_CACHE"/.tmp-"$slug"-* "$entry"; do remove_tree "$stale"; done

  log images "$name: building (key $key)"
  TMP_ENTRY=$(mktemp -d "$IMAGES_CACHE/.tmp-$slug-$key-XXXXXX")
  chmod 0755 "$TMP_ENTRY"
  local root="$TMP_ENTRY/rootfs"
  case "$name" in
    debian:12) step --watch "$root" "$name: mmdebstrap bookworm minbase (+${#DEBIAN_12_PACKAGES[@]} packages)" recipe_debian_12 "$root" ;;
    busybox) step --watch "$root" "$name: unpack busybox-static $busybox_version" recipe_busybox "$root" "$busybox_deb" ;;
  esac
  log images "$name: rootfs $(du -sh --apparent-size "$root" | cut -f1), $(find "$root" | wc -l) entries"
  step "$name: mkfs.ext4 ($(( $(image_size "$name") / 1048576 )) MiB) + qemu-img convert -c + check" \
    make_qcow2 "$root" "$(image_size "$name")" "$TMP_ENTRY/image.qcow2"
  step "$name: remove build tree" remove_tree "$root"

  local qcow="$TMP_ENTRY/image.qcow2" sha vsize fsize
  chmod 0444 "$qcow"
  sha=$(sha256_of "$qcow")
  [ ${#sha} -eq 64 ]
  printf '%s  image.qcow2\n' "$sha" > "$TMP_ENTRY/image.qcow2.sha256"
  vsize=$(qemu-img info --output=json "$qcow" | jq '."virtual-size"')
  fsize=$(stat -c %s "$qcow")
  jq -n --arg name "$name" --arg file "$slug.qcow2" --argjson v "$vsize" --argjson f "$fsize" \
    --arg sha "$sha" --arg d "$(image_description "$name")" --arg key "$key" \
    '{name: $name, file: $file, format: "qcow2", filesystem: "ext4",
      virtualSizeBytes: $v, fileSizeBytes: $f, sha256: $sha, description: $d, recipeKey: $key}' \
    > "$TMP_ENTRY/info.json"
  image_recipe "$name" > "$TMP_ENTRY/recipe.txt"
  touch "$TMP_ENTRY/done"
  mv -T "$TMP_ENTRY" "$entry"
  TMP_ENTRY=""

  # Older recipes of the same image are dead weight (artifacts hard-linked to
  # them keep their own link).
  for stale in "$IMAGES_CACHE/$slug"-*; do
    [ "$stale" = "$entry" ] || remove_tree "$stale"
  done
  exec {lockfd}>&-
  log images "$name: built in $((SECONDS - t0))s: $(du -h --apparent-size "$entry/image.qcow2" | cut -f1) qcow2"
  ENTRY="$entry"
}

# ---------------------------------------------------------------------------

need_debs mmdebstrap e2fsprogs qemu-utils jq util-linux
mkdir -p "$IMAGES_CACHE" "$OUT_DIR"

ALL_IMAGES=(debian:12 busybox)
IFS=',' read -r -a selected <<< "${SANDBOX_IMAGES:-debian:12,busybox}"
wanted=()
for n in "${selected[@]}"; do
  n="$(echo "$n" | tr -d '[:space:]')"
  [ -n "$n" ] || continue
  image_known "$n" || { echo "unknown image '$n' (known: ${ALL_IMAGES[*]})" >&2; exit 1; }
  wanted+=("$n")
done

declare -A entries=()
for n in "${wanted[@]}"; do
  build_image "$n"
  entries[$n]="$ENTRY"
  slug=$(jq -r .file "${entries[$n]}/info.json")
  place "${entries[$n]}/image.qcow2" "$OUT_DIR/$slug"
done

# catalog.json: the images built now, plus entries of the previous catalog for
# images not selected this time whose files are still there, unchanged in size.
catalog="$OUT_DIR/catalog.json"
old='{"images":[]}'
[ -f "$catalog" ] && old=$(cat "$catalog")
parts=()
for n in "${ALL_IMAGES[@]}"; do
  if [ -n "${entries[$n]:-}" ]; then
    parts+=("$(jq 'del(.recipeKey)' "${entries[$n]}/info.json")")
  else
    prev=$(jq -c --arg n "$n" '.images[]? | select(.name == $n)' <<< "$old")
    if [ -n "$prev" ]; then
      f=$(jq -r .file <<< "$prev"); s=$(jq -r .fileSizeBytes <<< "$prev")
      if [ -f "$OUT_DIR/$f" ] && [ "$(stat -c %s "$OUT_DIR/$f")" = "$s" ]; then parts+=("$prev"); fi
    fi
  fi
done
printf '%s\n' "${parts[@]}" | jq -s '{images: .}' > "$catalog.tmp"
mv "$catalog.tmp" "$catalog"
log images "catalog: $catalog ($(jq '.images | length' "$catalog") images)"
