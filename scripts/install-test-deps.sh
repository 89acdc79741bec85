#!/usr/bin/env bash
# Installs what the test suite needs beyond cargo, if missing: the wasm32-wasip1 target
# (scripts/build-functions.sh adds it), curl (HTTP/1.1 and HTTP/2 client), pgrep,
# nats-server (the shared registry's JetStream), systemd-analyze (the deploy/ units are
# verified), ip and tc (the network-namespace tests), and for python3 aioquic (an independent
# HTTP/3 client) and prometheus_client (its OpenMetrics parser checks /metrics).
set -euo pipefail
missing=()
command -v curl >/dev/null || missing+=(curl)
command -v pgrep >/dev/null || missing+=(procps)
command -v nats-server >/dev/null || missing+=(nats-server)
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v ip >/dev/null || missing+=(iproute2)
command -v tc >/dev/null || missing+=(iproute2)
command -v python3 >/dev/null || missing+=(python3 python3-pip)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-test-deps: please install: ${missing[*]}" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
for module in aioquic prometheus_client; do
  if ! python3 -c "import $module" 2>/dev/null; then
    python3 -m pip install --quiet "$module" ||
      python3 -m pip install --quiet --break-system-packages "$module"
  fi
done
