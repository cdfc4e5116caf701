#!/usr/bin/env bash
# Runs the whole test suite against a local broker: with every feature
# (unit, integration and bridge end-to-end tests), the doc tests (the
# README's code blocks among them), then the library alone. It first
# makes sure of a broker, OpenSSL's build files (the `tls` feature) and
# the programs the bridge tests drive (OpenSSH, psql, ...), installing
# what is missing.
#
# Each part is built first with cargo's own output (its progress bar on a
# terminal), then run. Every part runs even when an earlier one fails.
# The output ends with the reliability scenarios that passed, the targets
# that failed, and one verdict line: `N passed, M failed, K ignored`
# (tests, counted over every part; a part that did not build counts as
# one failure). Exits non-zero if anything failed.
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
ignored=0
failures=()

# sum LOG FIELD: adds up FIELD ("passed", "failed", "ignored") over the
# `test result:` lines of LOG.
sum() {
  sed -n "s/^test result: .*[ ;]\([0-9][0-9]*\) $2[;.].*/\1/p" "$1" | awk '{s+=$1} END {print s+0}'
}

# run NAME CARGO-ARGS...: one part. It is built first, straight to the
# terminal (cargo shows its progress only there, not through a pipe);
# then its tests run, their output going to the terminal and to a log
# whose `test result:` lines are added up.
run() {
  local name=$1
  shift
  local log="$logs/$name.log"
  # (Doc tests are built as they run: cargo has no --no-run for them.)
  local arg build=yes
  for arg in "$@"; do [ "$arg" = --doc ] && build=no; done
  [ "$build" = no ] || echo "== $name: building (cargo $* --no-run)"
  if [ "$build" = yes ] && ! cargo "$@" --no-run; then
    failed=$((failed + 1))
    failures+=("$name: did not build")
    return
  fi
  echo "== $name: cargo $*"
  cargo "$@" 2>&1 | tee "$log"
  local status=${PIPESTATUS[0]}
  local p f i
  p=$(sum "$log" passed)
  f=$(sum "$log" failed)
  i=$(sum "$log" ignored)
  passed=$((passed + p))
  failed=$((failed + f))
  ignored=$((ignored + i))
  # cargo's own list of the targets that failed (--no-fail-fast)...
  local targets
  targets=$(sed -n 's/^    `\(.*\)`$/\1/p' "$log" | paste -sd ' ' -)
  if [ -z "$targets" ]; then
    targets=$(sed -n 's/^error: test failed, to rerun pass `\(.*\)`$/\1/p' "$log" | paste -sd ' ' -)
  fi
  if [ "$status" -ne 0 ]; then
    if [ "$f" -eq 0 ]; then
      # ... or a part that failed without a failing test.
      failed=$((failed + 1))
      failures+=("$name: did not run to its end (see $log)")
    else
      failures+=("$name: ${targets:-see $log}")
    fi
  fi
}

run all-features test --all-features --all-targets --no-fail-fast
run doc-tests test --all-features --doc
run library-alone test --no-default-features --lib

# The reliability summary, one scenario a block, within 100 columns.
if [ -s "$summary" ]; then
  echo
  echo "Reliability scenarios that passed (bytes verified intact):"
  sort "$summary" | awk -F'\t' '
    function size(n) {
      if (n >= 1073741824) return sprintf("%.1f GiB", n / 1073741824)
      if (n >= 1048576) return sprintf("%.1f MiB", n / 1048576)
      if (n >= 1024) return sprintf("%.1f KiB", n / 1024)
      return n " B"
    }
    # Prints TEXT after LABEL, wrapped within 100 columns under its start.
    function wrap(label, text,    words, n, i, line, pad) {
      pad = sprintf("%11s", "")
      line = sprintf("  %-8s ", label ":")
      n = split(text, words, " ")
      for (i = 1; i <= n; i++) {
        if (length(line) + 1 + length(words[i]) > 100 && length(line) > 11) {
          print line
          line = pad words[i]
        } else {
          line = line (length(line) > 11 ? " " : "") words[i]
        }
      }
      print line
    }
    {
      print ($5 > 0 ? $1 "  [" size($5) "]" : $1)
      wrap("load", $2)
      wrap("fault", $3)
      wrap("outcome", $4)
    }'
fi
echo
if [ ${#failures[@]} -gt 0 ]; then
  echo "Failed:"
  printf '  %s\n' "${failures[@]}"
fi
echo "$passed passed, $failed failed, $ignored ignored"
[ "$failed" -eq 0 ] && [ ${#failures[@]} -eq 0 ]
