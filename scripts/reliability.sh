#!/usr/bin/env bash
# Runs the fault tests under load (gateway/tests/faults.rs, and the network-namespace
# faults of gateway/tests/netns.rs as root) one at a time and prints their rows as the
# markdown table of RELIABILITY.md. Extra arguments go to `cargo test`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/build-functions.sh >/dev/null
cargo build --workspace --bins --locked
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test -p edge-gateway --locked --test faults --test netns "$@" -- --nocapture --test-threads 1 2>&1 | tee "$log" >&2
echo "| fault | load | requests | failed | retried | time to detect | back in rotation | p99 | max |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
grep -o '^RELIABILITY | .*' "$log" | sed 's/^RELIABILITY //'
