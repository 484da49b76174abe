#!/usr/bin/env bash
# Materialises the current platform package under node_modules, the same
# layout an npm install of the optional dependency produces.
source "$(dirname "$0")/lib.sh"
case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) plat=linux-x64-gnu ;;
  Darwin-arm64) plat=darwin-arm64 ;;
  *) echo "unsupported platform $(uname -s)-$(uname -m)" >&2; exit 1 ;;
esac
mkdir -p "$REPO_ROOT/node_modules/@torkbot"
ln -sfn "../../platform-packages/$plat" "$REPO_ROOT/node_modules/@torkbot/sandbox-$plat"
log link "node_modules/@torkbot/sandbox-$plat -> platform-packages/$plat"
