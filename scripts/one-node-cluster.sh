# Sourced by the bench scripts: starts `edge up` with one node serving `hello` and
# `stream` in a temporary folder, and stops it on exit. Sets `bin`, `dir` (the state is
# `$dir/edge`) and `addr` (the gateway's users' address) once the node has both deployed.
# `BIN` names other binaries than this checkout's (which are built); `WORKERS` sets the
# node's worker threads (default 2).
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/build-functions.sh"
if [ -n "${BIN:-}" ]; then
  bin=$BIN
else
  (cd "$root" && cargo build --quiet --bins)
  bin=${CARGO_TARGET_DIR:-$root/target}/debug
fi
dir=$(mktemp -d)
cat > "$dir/cluster.toml" <<TOML
nodes = 1
node_worker_threads = ${WORKERS:-2}
listen = "127.0.0.1:0"
[[functions]]
name = "hello"
module = "$root/functions/target/wasm32-wasip1/release/hello.wasm"
[[functions]]
name = "stream"
module = "$root/functions/target/wasm32-wasip1/release/stream.wasm"
TOML
source "$root/scripts/edge-up.sh"
trap 'kill $up 2>/dev/null; wait $up 2>/dev/null; rm -rf "$dir"' EXIT
edge_up "$bin" "$dir/cluster.toml" "$dir/edge"
# Until the node has both functions deployed.
for _ in $(seq 1 600); do
  [ "$(grep -c 'deployment=' "$dir/edge/node-1.log" 2>/dev/null)" -ge 2 ] && break
  sleep 0.1
done
