#!/usr/bin/env bash
# Runs the whole test suite (unit, integration and doc tests) against a
# local broker, starting one first if needed (and installing OpenSSL's
# build files for the `tls` feature if missing), then prints the reliability
# summary: one row per fault, load or bad-input scenario that passed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-broker.sh
bash scripts/ensure-build-deps.sh
bash scripts/ensure-test-tools.sh
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
# Every feature (the bridge and TLS); then the library alone, whose
# build without `tls` answers amqps:// URLs with `Unsupported`.
cargo test --all-features --all-targets --no-fail-fast
cargo test --all-features --doc
cargo test --no-default-features --lib
