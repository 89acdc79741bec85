#!/usr/bin/env bash
# Throughput of `hello` through one edge node alone: HTTP/3 with mutual TLS over loopback,
# no gateway, as a fraction of the bare quinn + h3 server under the same load in the same
# run (`--baseline`), plus the node's CPU time over the measured window split by thread
# group (edge-worker = wasm, tokio-runtime-w = QUIC, TLS, HTTP/3 and the async glue).
#   scripts/bench-node.sh [edge-loadtest flags, e.g. --connections 4 --streams 16 --duration 10s]
# WORKERS sets the node's worker threads (default 2).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/scripts/one-node-cluster.sh"
id=$(grep -o 'deployment=hello@[0-9a-f]*' "$dir/edge/node-1.log" | head -1 | cut -d= -f2)
addr=$(cat "$dir/edge/node-1.addr")
pid=$(pgrep -f "edge-node --config $dir/edge/node-1.toml")
certs="$dir/edge/certs"
"$bin/edge-loadtest" "https://edge-node/hello" --connect "$addr" --ca "$certs/ca.pem" \
  --cert "$certs/member.pem" --key "$certs/member.key" -H "x-edge-function: $id" \
  --baseline --cpu-of "$pid" "$@"
