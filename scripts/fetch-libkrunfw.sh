#!/usr/bin/env bash
# Fetches the guest kernel of the krun backend: libkrunfw.so.5 from Debian sid's
# `libkrunfw5` package, without adding sid to the system's apt sources (apt runs
# with a private sources list, state and cache under the cache directory).
#
# Usage: scripts/fetch-libkrunfw.sh [DEST]
#   DEST  where to place the library
#         (default: platform-packages/linux-x64-gnu/artifacts/kernel/krun/libkrunfw.so.5)
#
# Cache: ${SANDBOX_CACHE_DIR:-$HOME/.cache/torkbot-sandbox}/libkrunfw/<sha256 of the .deb>/libkrunfw.so.5
#        ${SANDBOX_CACHE_DIR:-…}/libkrunfw/current   (the sha256 in use)
# The network is used only when the cache is empty (or LIBKRUNFW_REFRESH=1).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO_ROOT/scripts/progress.sh"
source "$REPO_ROOT/scripts/apt-private.sh"
CACHE_ROOT="${SANDBOX_CACHE_DIR:-$HOME/.cache/torkbot-sandbox}/libkrunfw"
DEST="${1:-$REPO_ROOT/platform-packages/linux-x64-gnu/artifacts/kernel/krun/libkrunfw.so.5}"
PACKAGE="libkrunfw5"
ARCH="amd64"
MIRROR="${LIBKRUNFW_MIRROR:-http://deb.debian.org/debian}"
KEYRING="/usr/share/keyrings/debian-archive-keyring.gpg"

log() { printf '[libkrunfw +%ss] %s\n' "$SECONDS" "$*" >&2; }
die() { printf '[libkrunfw +%ss] error: %s\n' "$SECONDS" "$*" >&2; exit 1; }

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# cached_lib SHA: prints the cached library path if that cache entry is complete.
cached_lib() {
  local dir="$CACHE_ROOT/$1"
  [ -f "$dir/libkrunfw.so.5" ] && [ -f "$dir/libkrunfw.so.5.sha256" ] || return 1
  [ "$(sha256_of "$dir/libkrunfw.so.5")" = "$(cat "$dir/libkrunfw.so.5.sha256")" ] || return 1
  printf '%s\n' "$dir/libkrunfw.so.5"
}

# place SRC DEST: hard-links SRC to DEST, or copies it across filesystems.
place() {
  local src="$1" dest="$2"
  mkdir -p "$(dirname "$dest")"
  if [ -e "$dest" ] && [ "$src" -ef "$dest" ]; then return 0; fi
  if [ -f "$dest" ] && cmp -s "$src" "$dest"; then return 0; fi
  local tmp="$dest.tmp.$$"
  rm -f "$tmp"
  ln "$src" "$tmp" 2>/dev/null || cp "$src" "$tmp"
  mv -f "$tmp" "$dest"
}

mkdir -p "$CACHE_ROOT"

# 1. Cache first.
lib=""
log "checking the cache in $CACHE_ROOT"
if [ "${LIBKRUNFW_REFRESH:-0}" != 1 ] && [ -f "$CACHE_ROOT/current" ]; then
  sha="$(cat "$CACHE_ROOT/current")"
  if lib="$(cached_lib "$sha")"; then
    log "cache hit: $sha ($(cat "$CACHE_ROOT/$sha/version" 2>/dev/null || echo 'unknown version'))"
  else
    log "cache entry $sha is incomplete; fetching again"
    lib=""
  fi
fi

# 2. Otherwise download the .deb from sid with a private apt configuration.
if [ -z "$lib" ]; then
  for tool in apt-get dpkg-deb sha256sum; do
    command -v "$tool" >/dev/null || die "$tool is required (Debian/Ubuntu host)"
  done
  [ -r "$KEYRING" ] || die "$KEYRING is missing: install the debian-archive-keyring package"

  apt_dir="$CACHE_ROOT/apt"
  apt_private_setup "$apt_dir" "deb [signed-by=$KEYRING] $MIRROR sid main"
  apt_opts=("${APT_PRIVATE_OPTS[@]}")

  log "updating the private apt lists for $MIRROR sid main"
  progress --watch "$apt_dir/lists" "apt-get update (sid lists)" apt-get "${apt_opts[@]}" update \
    || die "apt-get update of sid failed (network or keyring problem)"

  version="$(apt_private_version "$PACKAGE")"
  [ -n "$version" ] || die "$PACKAGE is not in sid's package list"

  work="$(mktemp -d "$CACHE_ROOT/tmp.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  log "downloading $PACKAGE $version"
  download_deb() { cd "$work" && apt-get "${apt_opts[@]}" download "$PACKAGE=$version"; }
  progress --watch "$work" "download $PACKAGE $version" download_deb \
    || die "apt-get download $PACKAGE=$version failed"
  deb="$(find "$work" -maxdepth 1 -name "${PACKAGE}_*.deb" | head -n1)"
  [ -n "$deb" ] || die "the download produced no .deb"
  sha="$(sha256_of "$deb")"
  log "downloaded $(basename "$deb") sha256=$sha"

  if lib="$(cached_lib "$sha")"; then
    log "this .deb is already cached"
  else
    log "extracting $(basename "$deb")"
    dpkg-deb -x "$deb" "$work/x"
    so="$(find "$work/x" -name 'libkrunfw.so.5*' \( -type f -o -type l \) | sort | head -n1)"
    [ -n "$so" ] || die "no libkrunfw.so.5* in $(basename "$deb")"
    LC_ALL=C grep -q -a krunfw_get_kernel "$so" \
      || die "$(basename "$so") does not export krunfw_get_kernel"
    entry="$CACHE_ROOT/$sha"
    rm -rf "$entry.tmp"; mkdir -p "$entry.tmp"
    cp -L "$so" "$entry.tmp/libkrunfw.so.5"
    chmod 0644 "$entry.tmp/libkrunfw.so.5"
    sha256_of "$entry.tmp/libkrunfw.so.5" > "$entry.tmp/libkrunfw.so.5.sha256"
    printf '%s %s\n' "$PACKAGE" "$version" > "$entry.tmp/version"
    basename "$deb" > "$entry.tmp/deb"
    rm -rf "$entry"; mv "$entry.tmp" "$entry"
    lib="$entry/libkrunfw.so.5"
    log "cached $(basename "$(readlink -f "$so")") as $lib"
  fi
  printf '%s\n' "$sha" > "$CACHE_ROOT/current.tmp"
  mv -f "$CACHE_ROOT/current.tmp" "$CACHE_ROOT/current"
  # The private apt lists (~20 MB) are stale by the next refresh anyway.
  rm -rf "$apt_dir"
fi

# 3. Place it.
log "placing it at $DEST"
place "$lib" "$DEST"
log "done: $DEST ($(stat -c %s "$DEST") bytes)"
