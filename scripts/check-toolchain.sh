#!/usr/bin/env bash
# Checks that cargo is installed and new enough for this crate (the
# `rust-version` in Cargo.toml); says how to get one when it is not.
set -euo pipefail
cd "$(dirname "$0")/.."

needed=$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' Cargo.toml)
how="Install Rust $needed or newer with rustup (https://rustup.rs: \`curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh\`, then \`. \"\$HOME/.cargo/env\"\`), or \`rustup update\` if you have it. Debian's own rustc package is older than this crate needs (edition 2024)."

if ! command -v cargo >/dev/null 2>&1; then
  echo "toolchain: cargo not found. $how" >&2
  exit 1
fi
have=$(cargo --version | awk '{print $2}')
# The older of the two versions, compared part by part.
oldest=$(printf '%s\n%s\n' "$needed" "${have%%-*}" | sort -V | head -n1)
if [ "$oldest" != "$needed" ]; then
  echo "toolchain: cargo $have is too old: this crate needs Rust $needed or newer. $how" >&2
  exit 1
fi
echo "toolchain: cargo $have (needs $needed or newer)"
