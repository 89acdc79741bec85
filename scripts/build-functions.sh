#!/usr/bin/env bash
# Builds the example guest functions for wasm32-wasip1, installing the target if missing.
# Output: functions/target/wasm32-wasip1/release/NAME.wasm
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if ! rustup target list --installed | grep -qx wasm32-wasip1; then
  rustup target add wasm32-wasip1
fi
cargo build --quiet --release --locked \
  --manifest-path "$root/functions/Cargo.toml" \
  --target wasm32-wasip1 --target-dir "$root/functions/target"
