#!/usr/bin/env bash
# Starts a local cluster: one gateway and three nodes as separate processes, with the
# example functions deployed, users' traffic on 127.0.0.1:4433. Ctrl-C stops it.
# Extra arguments go to `edge up` (for example --config FILE).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/build-functions.sh
cargo build --workspace --bins --locked
target=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
exec "$target/debug/edge" up "$@"
