#!/usr/bin/env bash
# The ramp experiment (BENCHMARKS.md, issue 15): 100 functions of Zipf popularity (100
# distinct modules: `hello` with a custom section of its own each) on three nodes, all
# cold but each function compiled on its home node at start; an open-loop ramp from 1
# request/s to saturation over 60 s, then 60 s at 80% of saturation. In one
# `edge-loadtest compare` run, each cluster started fresh in turn:
#   before: nodes compile what they run, pre-warm on the warm nodes' load now, no
#           spare (share_artifacts = false, prewarm = "threshold", min_warm_nodes = 1);
#   after:  the defaults (artifacts from peers, pre-warm on the projected rate).
# Saturation is measured first: the closed-loop throughput of the "after" cluster under
# the same mix, once it is warm (a 20 s unmeasured warm-up, then 20 s measured). Last,
# the reference the plateau is held to: one function alone, warm (10 s of warm-up), at
# the plateau's rate for 60 s.
# Usage: scripts/ramp-experiment.sh [RATE] (RATE skips the saturation run). Writes
# .edge-ramp/.
set -euo pipefail
rate=${1:-}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/build-functions.sh
cargo build --workspace --bins --locked
bin=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/debug
work=.edge-ramp
rm -rf "$work"
mkdir -p "$work/modules"
python3 - "$work" <<'PY'
import sys
work = sys.argv[1]
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
before = 'share_artifacts = false\nprewarm = "threshold"\nmin_warm_nodes = 1\n'
for label, keys in (("before", before), ("after", "")):
    open(f"{work}/{label}.toml", "w").write(f"nodes = 3\n{keys}{functions}")
open(f"{work}/single.toml", "w").write(
    'nodes = 3\n[[functions]]\nname = "f000"\nmodule = "modules/f000.wasm"\n')
requests = "".join(
    f'\n[[requests]]\nname = "{name}"\npath = "/{name}"\nweight = {round(1000 / (i + 1))}\n'
    f'expect_status = 200\n' for i, name in enumerate(names))
common = 'target = "https://localhost"\nconnections = 8\ntimeout = "10s"\n'
open(f"{work}/requests.toml", "w").write(requests)
open(f"{work}/saturate.toml", "w").write(
    common + 'warmup = "20s"\nduration = "20s"\nstreams = 32\n' + requests)
PY
compare() { "$bin/edge-loadtest" compare --quiet "$@"; }
if [ -z "$rate" ]; then
  echo "== saturation (closed loop, after, warm)"
  compare --clusters "after=$work/after.toml" --scenario "$work/saturate.toml" \
    --json "$work/saturate.json"
  rate=$(python3 -c 'import json, sys; print(round(json.load(open(sys.argv[1]))["after"]["throughput"]))' \
    "$work/saturate.json")
fi
echo "== ramp to $rate/s, then $((rate * 8 / 10))/s"
common='target = "https://localhost"\nwarmup = "0s"\nconnections = 8\ntimeout = "10s"\nduration = "60s"\n'
printf "$common"'rate = 1\nramp_to = %s\n' "$rate" | cat - "$work/requests.toml" >"$work/ramp.toml"
printf "$common"'rate = %s\n' "$((rate * 8 / 10))" | cat - "$work/requests.toml" >"$work/plateau.toml"
compare --clusters "before=$work/before.toml" --clusters "after=$work/after.toml" \
  --scenario "$work/ramp.toml" --then "$work/plateau.toml" --keep "$work/clusters" \
  --json "$work/ramp.json" \
  --svg "$work/ramp.svg" | tee "$work/ramp.txt"
echo "== reference: f000 alone, warm, at $((rate * 8 / 10))/s"
printf "$common"'rate = %s\n[[requests]]\nname = "f000"\npath = "/f000"\nexpect_status = 200\n' \
  "$((rate * 8 / 10))" | sed 's/warmup = "0s"/warmup = "10s"/' >"$work/single-load.toml"
compare --clusters "single=$work/single.toml" --scenario "$work/single-load.toml" \
  --json "$work/single.json" | tee "$work/single.txt"
