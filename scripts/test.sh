#!/usr/bin/env bash
# Runs the whole test suite against a local broker: with every feature
# (unit, integration and bridge end-to-end tests), the doc tests, then
# the library alone. It first makes sure of a broker, OpenSSL's build
# files (the `tls` feature) and the programs the bridge tests drive
# (OpenSSH, psql, ...), installing what is missing.
#
# Every part runs even when an earlier one fails. The output ends with
# the reliability scenarios that passed, the targets that failed, and
# one verdict line: `N passed, M failed` (tests, counted over every
# part; a part that did not build counts as one failure). Exits non-zero
# if anything failed.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/check-toolchain.sh || exit 1
bash scripts/ensure-broker.sh || exit 1
bash scripts/ensure-build-deps.sh || exit 1
bash scripts/ensure-test-tools.sh || exit 1

target_dir="${CARGO_TARGET_DIR:-target}"
summary="$target_dir/tmp/reliability-summary.tsv"
logs="$target_dir/tmp/test-sh"
rm -rf "$summary" "$logs"
mkdir -p "$logs"

passed=0
failed=0
failures=()

# run NAME CARGO-ARGS...: one part; its output goes to the terminal and
# to a log, whose `test result:` lines are added up.
run() {
  local name=$1
  shift
  local log="$logs/$name.log"
  echo "== $name: cargo $*"
  cargo "$@" 2>&1 | tee "$log"
  local status=${PIPESTATUS[0]}
  local p f
  p=$(sed -n 's/^test result: .* \([0-9][0-9]*\) passed; .*/\1/p' "$log" | awk '{s+=$1} END {print s+0}')
  f=$(sed -n 's/^test result: .*; \([0-9][0-9]*\) failed;.*/\1/p' "$log" | awk '{s+=$1} END {print s+0}')
  passed=$((passed + p))
  failed=$((failed + f))
  # cargo's own list of the targets that failed (--no-fail-fast)...
  local targets
  targets=$(sed -n 's/^    `\(.*\)`$/\1/p' "$log" | paste -sd ' ' -)
  if [ -z "$targets" ]; then
    targets=$(sed -n 's/^error: test failed, to rerun pass `\(.*\)`$/\1/p' "$log" | paste -sd ' ' -)
  fi
  if [ "$status" -ne 0 ]; then
    if [ "$f" -eq 0 ]; then
      # ... or a part that failed without a failing test: it did not build.
      failed=$((failed + 1))
      failures+=("$name: did not build or run (see $log)")
    else
      failures+=("$name: ${targets:-see $log}")
    fi
  fi
}

run all-features test --all-features --all-targets --no-fail-fast
run doc-tests test --all-features --doc
run library-alone test --no-default-features --lib

if [ -s "$summary" ]; then
  echo
  echo "Reliability scenarios that passed:"
  { printf 'scenario\tload\tfault\toutcome\tbytes verified\n'; sort "$summary"; } |
    column -t -s $'\t'
fi
echo
if [ ${#failures[@]} -gt 0 ]; then
  echo "Failed:"
  printf '  %s\n' "${failures[@]}"
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ ${#failures[@]} -eq 0 ]
