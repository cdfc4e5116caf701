#!/usr/bin/env bash
# Makes sure the real programs the bridge's end-to-end tests drive are
# installed: OpenSSH's server and client (ssh, scp, sshd, ssh-keygen),
# PostgreSQL's and Redis's command-line clients (psql, redis-benchmark),
# socat and curl; zsh and fish (the completion scripts are run in them)
# and promtool (Debian's prometheus package: checks the metrics'
# exposition). Installs Debian's packages for whatever is missing.
set -euo pipefail

missing=()
need() { command -v "$1" >/dev/null 2>&1 || [ -x "$1" ] || missing+=("$2"); }
need /usr/sbin/sshd openssh-server
need ssh openssh-client
need scp openssh-client
need ssh-keygen openssh-client
need psql postgresql-client
need redis-benchmark redis-tools
need socat socat
need curl curl
need zsh zsh
need fish fish
need promtool prometheus

if [ ${#missing[@]} -eq 0 ]; then
  echo "test tools: sshd, ssh, psql, redis-benchmark, socat, curl, zsh, fish and promtool present"
  exit 0
fi

# Each package once, in order.
mapfile -t packages < <(printf '%s\n' "${missing[@]}" | awk '!seen[$0]++')
echo "test tools: installing ${packages[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# openssh-server's and prometheus's own start attempts fail without
# systemd; the tests run their own sshd on a port of their own and use
# only promtool, so those failures do not matter.
apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null || true
[ -x /usr/sbin/sshd ] && command -v ssh >/dev/null && command -v psql >/dev/null &&
  command -v redis-benchmark >/dev/null && command -v socat >/dev/null &&
  command -v curl >/dev/null && command -v zsh >/dev/null && command -v fish >/dev/null &&
  command -v promtool >/dev/null ||
  { echo "test tools: install failed" >&2; exit 1; }
echo "test tools: installed"
