#!/usr/bin/env bash
# edge's whole path (gateway and one node, TLS on the gateway's TCP port) against
# `wasmtime serve` with the same hello as a wasm32-wasip2 component (plain HTTP, one
# process), under the same load tool in one run: wrk over HTTP/1.1, 2 threads, at each
# connection count. A benchmark, not a test: outside CI. Installs what it needs: wrk
# (Debian), the wasm32-wasip2 target, and wasmtime-cli 48.0.8 (cargo install: about 14
# minutes on 2 cores, once).
#   node/compare/serve.sh [SECONDS] [CONNECTIONS...]     (default: 10 16 64)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
seconds=${1:-10}
shift || true
if [ $# -gt 0 ]; then connections=("$@"); else connections=(16 64); fi

command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
rustup target add wasm32-wasip2 >/dev/null
if ! wasmtime --version 2>/dev/null | grep -q '^wasmtime 48\.0\.8'; then
  cargo install wasmtime-cli --version 48.0.8 --locked
fi
component_target=${CARGO_TARGET_DIR:-$root/target}/compare-serve
(cd "$here/serve" && CARGO_TARGET_DIR=$component_target cargo build --quiet --release --target wasm32-wasip2)
component=$component_target/wasm32-wasip2/release/hello_component.wasm

# edge: one gateway and one node with two worker threads (sets bin, dir, addr).
source "$root/scripts/one-node-cluster.sh"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
wasmtime serve -Scli --addr "127.0.0.1:$port" "$component" >"$dir/wasmtime.log" 2>&1 &
serve=$!
trap 'kill $serve 2>/dev/null; kill $up 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$port/" >/dev/null && break
  sleep 0.1
done
curl -sf "http://127.0.0.1:$port/" | grep -q 'hello, world!' || { echo "wasmtime serve did not answer" >&2; exit 1; }
curl -sfk "https://$addr/hello" | grep -q 'hello, world!' || { echo "edge did not answer" >&2; exit 1; }

rate() { wrk -t2 -c"$1" -d"${seconds}s" "$2" | awk '/Requests\/sec/ {print $2}'; }
echo "| connections | edge whole path (HTTPS, HTTP/1.1) req/s | wasmtime serve (HTTP/1.1) req/s | edge / wasmtime |"
echo "| --- | --- | --- | --- |"
for c in "${connections[@]}"; do
  edge=$(rate "$c" "https://$addr/hello")
  wasmtime=$(rate "$c" "http://127.0.0.1:$port/")
  ratio=$(python3 -c "print(f'{$edge / $wasmtime:.2f}x')")
  echo "| $c | $edge | $wasmtime | $ratio |"
done
