#!/usr/bin/env bash
# Makes sure what the `tls` feature and its tests need is installed:
# OpenSSL's development files and pkg-config (to build native-tls) and
# the openssl command (the TLS tests make their certificates with it).
# Installs Debian's packages for whatever is missing.
set -euo pipefail

missing=()
pkg-config --exists openssl 2>/dev/null || missing+=(libssl-dev pkg-config)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)

if [ ${#missing[@]} -eq 0 ]; then
  echo "build deps: OpenSSL and pkg-config present"
  exit 0
fi

echo "build deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}" >/dev/null
pkg-config --exists openssl && command -v openssl >/dev/null ||
  { echo "build deps: install failed" >&2; exit 1; }
