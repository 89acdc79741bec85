#!/usr/bin/env bash
# The whole path (gateway, a second QUIC hop, one node, a wasm instance) as a fraction of
# the bare quinn + h3 transport under the same load, in one run (`--baseline`), and of a
# bare relay in front of it (`--baseline-relay`: the same two hops without edge), with the
# gateway's CPU per request; then the node's CPU per request under the same load again.
#   scripts/bench-path.sh [edge-loadtest flags, default --connections 4 --streams 16 --duration 10s]
# BIN and WORKERS as for scripts/bench-node.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/scripts/one-node-cluster.sh"
if [ $# -eq 0 ]; then set -- --connections 4 --streams 16 --duration 10s; fi
gateway=$(pgrep -f "edge-gateway --config $dir/edge/" | head -1)
node=$(pgrep -f "edge-node --config $dir/edge/node-1.toml")
load=("$bin/edge-loadtest" "https://localhost/hello" --connect "$addr" --ca "$dir/edge/certs/ca.pem" --warmup 2s)
"${load[@]}" --baseline --baseline-relay --cpu-of "$gateway" "$@"
"${load[@]}" --cpu-of "$node" "$@"
