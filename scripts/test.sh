#!/usr/bin/env bash
# Runs the whole test suite (unit, integration and doc tests) against a
# local broker, starting one first if needed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-broker.sh
cargo test --all-targets --no-fail-fast
cargo test --doc
