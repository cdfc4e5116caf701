#!/usr/bin/env bash
# Makes sure a RabbitMQ broker answers on 127.0.0.1:5672: installs Debian's
# rabbitmq-server when it is missing, starts it when it is not running,
# then waits (up to 120 s) until the AMQP port accepts connections.
set -euo pipefail

port_open() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

if port_open; then
  echo "broker: 127.0.0.1:5672 answers"
  exit 0
fi

if ! command -v rabbitmq-server >/dev/null 2>&1; then
  echo "broker: installing Debian's rabbitmq-server"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # The package's own start attempt may fail without systemd; we start it below.
  apt-get install -y -qq rabbitmq-server >/dev/null || true
  command -v rabbitmq-server >/dev/null 2>&1 || { echo "broker: install failed" >&2; exit 1; }
fi

echo "broker: starting rabbitmq-server"
rabbitmq-server -detached || true

for _ in $(seq 1 120); do
  if port_open; then
    echo "broker: 127.0.0.1:5672 answers"
    exit 0
  fi
  sleep 1
done
echo "broker: 127.0.0.1:5672 still closed after 120 s" >&2
exit 1
