#!/usr/bin/env bash
# The echo demo: makes sure a broker runs, builds the examples, starts the
# echo server, sends a line through it with the echo client and prints
# the answer.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/check-toolchain.sh
bash scripts/ensure-broker.sh
echo "demo: building the examples (the first build compiles every dependency: a few minutes)"
cargo build --examples
queue="demo-echo-$$"
echo "demo: starting the echo server on queue $queue"
RUST_LOG=${RUST_LOG:-info} target/debug/examples/echo_server "$queue" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
# The client retries while the server is still binding (ConnectionRefused).
for _ in $(seq 1 50); do
  if echo "hello through RabbitMQ" | target/debug/examples/echo_client "$queue"; then
    exit 0
  fi
  sleep 0.2
done
echo "demo: the echo client got no answer" >&2
exit 1
