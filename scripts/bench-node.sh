#!/usr/bin/env bash
# Throughput of `hello` through one edge node alone: HTTP/3 with mutual TLS over loopback,
# no gateway, plus the node's CPU time split by thread group (edge-worker = wasm,
# tokio-runtime-w = QUIC, TLS, HTTP/3 and the async glue).
#   scripts/bench-node.sh [edge-loadtest flags, e.g. --connections 4 --streams 16 --duration 10s]
# WORKERS sets the node's worker threads (default 2).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${CARGO_TARGET_DIR:-$root/target}/debug
"$root/scripts/build-functions.sh"
(cd "$root" && cargo build --quiet --bins)
dir=$(mktemp -d)
cat > "$dir/cluster.toml" <<TOML
nodes = 1
node_worker_threads = ${WORKERS:-2}
listen = "127.0.0.1:0"
[[functions]]
name = "hello"
module = "$root/functions/target/wasm32-wasip1/release/hello.wasm"
TOML
"$bin/edge" up --config "$dir/cluster.toml" --dir "$dir/edge" >"$dir/up.log" 2>&1 &
up=$!
trap 'kill $up 2>/dev/null; wait $up 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 1 600); do
  grep -qs 'deployment=hello@' "$dir/edge/node-1.log" && break
  sleep 0.1
done
id=$(grep -o 'deployment=hello@[0-9a-f]*' "$dir/edge/node-1.log" | head -1 | cut -d= -f2)
addr=$(cat "$dir/edge/node-1.addr")
pid=$(pgrep -f "edge-node --config $dir/edge/node-1.toml")
certs="$dir/edge/certs"
"$bin/edge-loadtest" "https://edge-node/hello" --connect "$addr" --ca "$certs/ca.pem" \
  --cert "$certs/member.pem" --key "$certs/member.key" -H "x-edge-function: $id" \
  --cpu-of "$pid" "$@"
