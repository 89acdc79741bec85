#!/usr/bin/env bash
# The whole test suite: example functions built, test peers installed, every crate's unit
# and integration tests (real gateway and node processes on loopback).
# Extra arguments go to `cargo test`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/build-functions.sh
scripts/install-test-deps.sh
cargo test --workspace --locked "$@"
