#!/usr/bin/env bash
# Checks Cargo.lock against the RustSec advisory database with
# `cargo audit`, failing on any advisory, warnings included, that
# .cargo/audit.toml does not ignore with a reason.
#
# The database is a git repository that this project's machines cannot
# fetch (only package registries are reachable), so this uses a copy
# already there: $CARGO_AUDIT_DB, cargo-audit's usual place
# ~/.cargo/advisory-db, or advisory-db in the shared/ folder beside the
# repository. Without one it says so and checks nothing (exit 0): an
# audit against no database would pass and mean nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
db="${CARGO_AUDIT_DB:-}"
if [ -z "$db" ]; then
  db="$HOME/.cargo/advisory-db"
  [ -d "$db/crates" ] || [ ! -d ../shared/advisory-db/crates ] || db=../shared/advisory-db
fi
if [ ! -d "$db/crates" ]; then
  echo "audit: SKIPPED, no RustSec advisory database at $db (set CARGO_AUDIT_DB to a clone of it)"
  exit 0
fi
if ! cargo audit --version >/dev/null 2>&1; then
  echo "audit: installing cargo-audit"
  cargo install --locked cargo-audit --no-default-features
fi
echo "audit: cargo audit against $db ($(git -C "$db" log -1 --format=%cd --date=short 2>/dev/null || echo 'date unknown'))"
cargo audit --no-fetch --db "$db" --deny warnings
