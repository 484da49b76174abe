# Shared helpers for the build scripts. Source it; do not run it.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="${SANDBOX_CACHE_DIR:-$HOME/.cache/torkbot-sandbox}"
ARTIFACTS_DIR="${SANDBOX_ARTIFACTS_DIR:-$REPO_ROOT/platform-packages/linux-x64-gnu/artifacts}"
mkdir -p "$CACHE_DIR"
source "$REPO_ROOT/scripts/progress.sh"

# log TAG MESSAGE… — one progress line, with seconds since the script started.
log() { local tag="$1"; shift; printf '[%s +%ss] %s\n' "$tag" "$SECONDS" "$*" >&2; }

# Hard-links SRC to DEST (same filesystem) or copies it; never a symlink, so the
# artifact tree can be packed as-is.
place() {
  local src="$1" dest="$2"
  mkdir -p "$(dirname "$dest")"
  if [ -e "$dest" ] && [ "$src" -ef "$dest" ]; then return 0; fi
  rm -f "$dest"
  ln "$src" "$dest" 2>/dev/null || cp "$src" "$dest"
}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# Installs Debian packages that are missing, in one apt run.
need_debs() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  log apt "installing ${missing[*]}"
  progress "apt-get update" $sudo apt-get update
  progress "apt-get install ${missing[*]}" $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
}
