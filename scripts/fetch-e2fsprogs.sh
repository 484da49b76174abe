#!/usr/bin/env bash
# Fetches the e2fsprogs the image importer needs: mke2fs ≥ 1.47.1 (tarball
# input to `-d`, through libarchive) and the matching debugfs, from Debian
# bookworm-backports — built for this distribution's libc — without adding
# backports to the system's apt sources (see scripts/apt-private.sh). The
# system's own e2fsprogs (1.47.0 on Debian 12) is left alone.
#
# Usage: scripts/fetch-e2fsprogs.sh [DEST]
#   DEST  default: platform-packages/linux-x64-gnu/artifacts/tools/e2fsprogs
#         gets sbin/{mke2fs,debugfs}, lib/{libext2fs,libe2p}.so.2, VERSION, copyright
# Needs at run time: libarchive.so.13 (Debian: libarchive13; scripts/setup installs it).
#
# Cache: ${SANDBOX_CACHE_DIR:-~/.cache/torkbot-sandbox}/e2fsprogs/<sha256 of the .debs>/
#        …/e2fsprogs/current (the entry in use). The network is used only when
#        the cache is empty or E2FSPROGS_REFRESH=1.
source "$(dirname "$0")/lib.sh"
source "$REPO_ROOT/scripts/apt-private.sh"

DEST="${1:-$ARTIFACTS_DIR/tools/e2fsprogs}"
CACHE_ROOT="$CACHE_DIR/e2fsprogs"
MIRROR="${E2FSPROGS_MIRROR:-http://deb.debian.org/debian}"
KEYRING="/usr/share/keyrings/debian-archive-keyring.gpg"
PACKAGES=(e2fsprogs libext2fs2)
mkdir -p "$CACHE_ROOT"

complete() { [ -x "$1/sbin/mke2fs" ] && [ -x "$1/sbin/debugfs" ] && [ -f "$1/lib/libext2fs.so.2" ] && [ -f "$1/VERSION" ]; }

entry=""
if [ "${E2FSPROGS_REFRESH:-0}" != 1 ] && [ -f "$CACHE_ROOT/current" ] && complete "$CACHE_ROOT/$(cat "$CACHE_ROOT/current")"; then
  entry="$CACHE_ROOT/$(cat "$CACHE_ROOT/current")"
  log e2fsprogs "cached: $(cat "$entry/VERSION")"
fi

if [ -z "$entry" ]; then
  [ -r "$KEYRING" ] || { echo "$KEYRING is missing: install debian-archive-keyring" >&2; exit 1; }
  apt_dir="$CACHE_ROOT/apt"
  apt_private_setup "$apt_dir" "deb [signed-by=$KEYRING] $MIRROR bookworm-backports main"
  progress --watch "$apt_dir/lists" "apt-get update (bookworm-backports lists)" apt-get "${APT_PRIVATE_OPTS[@]}" update
  version="$(apt_private_version e2fsprogs)"
  [ -n "$version" ] || { echo "e2fsprogs is not in bookworm-backports' package list" >&2; exit 1; }
  work="$(mktemp -d "$CACHE_ROOT/tmp.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  download() { cd "$work" && apt-get "${APT_PRIVATE_OPTS[@]}" download "${PACKAGES[@]/%/=$version}"; }
  progress --watch "$work" "download e2fsprogs $version" download
  key="$(cat "$work"/*.deb | sha256sum | cut -c1-64)"
  entry="$CACHE_ROOT/$key"
  if ! complete "$entry"; then
    for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$work/x"; done
    rm -rf "$entry.tmp"; mkdir -p "$entry.tmp/sbin" "$entry.tmp/lib"
    cp -L "$work/x/sbin/mke2fs" "$work/x/sbin/debugfs" "$entry.tmp/sbin/"
    cp -L "$work/x/lib/x86_64-linux-gnu/libext2fs.so.2" "$work/x/lib/x86_64-linux-gnu/libe2p.so.2" "$entry.tmp/lib/"
    cp "$work/x/usr/share/doc/e2fsprogs/copyright" "$entry.tmp/copyright"
    printf 'e2fsprogs %s (Debian bookworm-backports)\n' "$version" > "$entry.tmp/VERSION"
    rm -rf "$entry"; mv "$entry.tmp" "$entry"
  fi
  printf '%s\n' "$(basename "$entry")" > "$CACHE_ROOT/current.tmp"
  mv -f "$CACHE_ROOT/current.tmp" "$CACHE_ROOT/current"
  rm -rf "$apt_dir"
  log e2fsprogs "cached $(cat "$entry/VERSION") as $entry"
fi

# Smoke test: a one-file tarball through `mke2fs -d -` (fails without libarchive).
probe="$(mktemp -d)"
tar -C "$REPO_ROOT" -cf "$probe/t.tar" package.json
truncate -s 8M "$probe/img"
if ! LD_LIBRARY_PATH="$entry/lib" "$entry/sbin/mke2fs" -q -F -t ext4 -d - "$probe/img" < "$probe/t.tar" 2>"$probe/err"; then
  cat "$probe/err" >&2; rm -rf "$probe"
  echo "mke2fs from $entry cannot read tarballs (is libarchive13 installed?)" >&2
  exit 1
fi
rm -rf "$probe"

for f in sbin/mke2fs sbin/debugfs lib/libext2fs.so.2 lib/libe2p.so.2 VERSION copyright; do place "$entry/$f" "$DEST/$f"; done
log e2fsprogs "placed $(cat "$DEST/VERSION") in $DEST"
