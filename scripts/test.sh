#!/usr/bin/env bash
# The whole test suite: example functions built, test peers installed, every crate's unit
# and integration tests (real gateway and node processes on loopback).
# Extra arguments go to `cargo test`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/build-functions.sh
scripts/install-test-deps.sh
# The integration tests start edge-node, edge-gateway and edge-loadtest as processes;
# `cargo test` builds a package's binaries only for that package's own tests.
cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"
