#!/usr/bin/env bash
# Runs the whole test suite (unit, integration and doc tests) against a
# local broker, starting one first if needed, then prints the reliability
# summary: one row per fault, load or bad-input scenario that passed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-broker.sh
summary="${CARGO_TARGET_DIR:-target}/tmp/reliability-summary.tsv"
rm -f "$summary"
print_summary() {
    [ -s "$summary" ] || return 0
    echo
    echo "Reliability summary (scenarios that passed):"
    { printf 'scenario\tload\tfault\toutcome\tbytes verified\n'; sort "$summary"; } |
        column -t -s $'\t'
}
trap print_summary EXIT
cargo test --all-targets --no-fail-fast
cargo test --doc
