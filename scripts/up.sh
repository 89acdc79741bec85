#!/usr/bin/env bash
# Starts a local cluster: one gateway and three nodes as separate processes, with the
# example functions deployed, users' traffic on 127.0.0.1:4433. Ctrl-C stops it.
# Extra arguments go to `edge up` (for example --config FILE, or --registry nats
# --gateways 2 for two gateways sharing a registry on NATS JetStream).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/build-functions.sh
# A shared registry needs nats-server (a Debian package).
if [[ " $* " == *nats* || " $* " == *shared-cluster* ]] && ! command -v nats-server >/dev/null; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "up.sh: the nats registry needs nats-server: apt-get install nats-server" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server
fi
cargo build --workspace --bins --locked
target=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
exec "$target/debug/edge" up "$@"
