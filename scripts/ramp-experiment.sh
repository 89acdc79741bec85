#!/usr/bin/env bash
# The ramp experiment (BENCHMARKS.md, issue 15): 100 functions of Zipf popularity (100
# distinct modules: `hello` with a custom section of its own each) on three nodes, all
# cold but each function compiled on its home node at start; an open-loop ramp from 100
# to RATE requests/s over 60 s, then 60 s at 80% of RATE. Two clusters side by side:
#   before: nodes compile what they run, pre-warm on the warm nodes' load now
#           (EDGE_NODE_ARTIFACTS__SHARE=false, EDGE_GATEWAY_PREWARM=threshold);
#   after:  the defaults (artifacts from peers, pre-warm on the projected rate).
# One cluster at a time; each phase is an `edge-loadtest compare --given` run, and the
# nodes' compiles and fetches are read from their metrics before and after each phase.
# Usage: scripts/ramp-experiment.sh [RATE] (default 4000). Writes .edge-ramp/.
set -euo pipefail
rate=${1:-4000}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/build-functions.sh
cargo build --workspace --bins --locked
bin=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/debug
work=.edge-ramp
rm -rf "$work"
mkdir -p "$work/modules"
python3 - "$work" "$rate" <<'PY'
import sys
work, rate = sys.argv[1], float(sys.argv[2])
hello = open("functions/target/wasm32-wasip1/release/hello.wasm", "rb").read()
def custom_section(i):
    name, payload = b"edge-ramp", f"function {i}".encode()
    body = bytes([len(name)]) + name + payload
    return bytes([0, len(body)]) + body
names = [f"f{i:03}" for i in range(100)]
functions = ""
for i, name in enumerate(names):
    open(f"{work}/modules/{name}.wasm", "wb").write(hello + custom_section(i))
    functions += f'\n[[functions]]\nname = "{name}"\nmodule = "modules/{name}.wasm"\n'
for label in ("before", "after"):
    open(f"{work}/{label}.toml", "w").write(
        'nodes = 3\nlisten = "127.0.0.1:4501"\n' + functions)
requests = "".join(
    f'\n[[requests]]\nname = "{name}"\npath = "/{name}"\nweight = {round(1000 / (i + 1))}\n'
    f'expect_status = 200\n' for i, name in enumerate(names))
common = 'target = "https://localhost"\nwarmup = "0s"\nconnections = 8\ntimeout = "10s"\n'
open(f"{work}/ramp.toml", "w").write(
    common + f'duration = "60s"\nrate = 100\nramp_to = {rate}\n' + requests)
open(f"{work}/steady.toml", "w").write(
    common + f'duration = "60s"\nrate = {0.8 * rate}\n' + requests)
PY
pids=()
stop() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap stop EXIT
loads() { # LABEL: compiles and fetches of the cluster's nodes
  for m in "$work/$1"/node-*.metrics; do
    curl -s "http://$(cat "$m")/metrics" | grep '^edge_node_module_cache_misses' || true
  done | awk -v l="$1" '/source="compile"/ {c += $2} /source="peer"/ {f += $2}
    END {printf "%s: %d compiles, %d artifacts from peers (all nodes, since start)\n", l, c, f}'
}
# One cluster at a time, so that each has the machine to itself.
for label in before after; do
  if [ "$label" = before ]; then
    export EDGE_NODE_ARTIFACTS__SHARE=false EDGE_GATEWAY_PREWARM=threshold
  else
    unset EDGE_NODE_ARTIFACTS__SHARE EDGE_GATEWAY_PREWARM
  fi
  "$bin/edge" up --config "$root/$work/$label.toml" --dir "$work/$label" >"$work/$label.log" 2>&1 &
  pids+=($!)
  answered=no
  for _ in $(seq 1 300); do
    if "$bin/edge" call https://localhost:4501/f000 --ca "$work/$label/certs/ca.pem" \
      >/dev/null 2>&1; then answered=yes; break; fi
    sleep 0.2
  done
  [ "$answered" = yes ] || { echo "ramp-experiment: $label did not answer" >&2; exit 1; }
  loads "$label"
  for phase in ramp steady; do
    echo "== $label, $phase"
    "$bin/edge-loadtest" compare --given "$label=127.0.0.1:4501" \
      --scenario "$work/$phase.toml" --ca "$work/$label/certs/ca.pem" --quiet \
      --json "$work/$label-$phase.json"
    loads "$label"
  done
  stop
done
