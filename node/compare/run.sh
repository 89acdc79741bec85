#!/usr/bin/env bash
# Runs the wasmer-vs-wasmtime warm-invocation comparison (builds wasmtime: minutes, once).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
"$here/../../scripts/build-functions.sh"
cd "$here"
exec cargo bench --profile dev --bench warm_hello "$@"
