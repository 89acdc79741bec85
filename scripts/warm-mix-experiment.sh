#!/usr/bin/env bash
# The ramp experiment's reference, with no cold start anywhere (BENCHMARKS.md, issue 15):
# on one `edge up` cluster of the ramp's "after" file (100 functions, 3 nodes), warm
# from a closed-loop run first, it measures
#   1. the closed-loop saturation of f000 alone, then of the 100-function mix (8
#      connections x 32 streams, 15 s of warm-up, 20 s measured);
#   2. each open loop at 80% of the mix's saturation (the ramp's plateau rate), 30 s,
#      alternated, ROUNDS times;
#   3. each open loop at 80% of its own saturation, 30 s.
# Usage: scripts/warm-mix-experiment.sh [ROUNDS] (default 2), after
# scripts/ramp-experiment.sh (its .edge-ramp/ files). Writes .edge-ramp/warm-mix/.
set -euo pipefail
rounds=${1:-2}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if [ ! -f .edge-ramp/after.toml ] || [ ! -f .edge-ramp/requests.toml ]; then
  echo "warm-mix-experiment: no .edge-ramp/after.toml: run scripts/ramp-experiment.sh first" >&2
  exit 1
fi
cargo build --workspace --bins --locked
bin=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/debug
work=.edge-ramp/warm-mix
rm -rf "$work"
mkdir -p "$work"
source scripts/edge-up.sh
trap 'kill -INT $up 2>/dev/null; wait $up 2>/dev/null || true' EXIT
edge_up "$bin" .edge-ramp/after.toml "$work/cluster"
run() {
  "$bin/edge-loadtest" --scenario "$1" --connect "$addr" \
    --ca "$work/cluster/certs/ca.pem" --quiet "${@:2}"
}
scenario() { # NAME LOAD-KEYS: the file of one load of `mix` or `single`
  local requests
  case $1 in
    mix*) requests=$(cat .edge-ramp/requests.toml) ;;
    *) requests=$'[[requests]]\nname = "f000"\npath = "/f000"\nexpect_status = 200' ;;
  esac
  printf 'target = "https://localhost"\nconnections = 8\ntimeout = "10s"\n%s\n%s\n' \
    "$2" "$requests" >"$work/$1.toml"
  echo "$work/$1.toml"
}
throughput() {
  python3 -c 'import json, sys; print(round(json.load(open(sys.argv[1]))["target"]["throughput"]))' "$1"
}
rows='^(all|in the cluster|node queue|guest run|errors)'
declare -A saturation
for load in single mix; do
  file=$(scenario "saturate-$load" $'warmup = "15s"\nduration = "20s"\nstreams = 32')
  run "$file" --json "$work/saturate-$load.json" >"$work/saturate-$load.txt"
  saturation[$load]=$(throughput "$work/saturate-$load.json")
  echo "== closed-loop saturation, $load: ${saturation[$load]} req/s"
done
plateau=$((saturation[mix] * 8 / 10))
for round in $(seq 1 "$rounds"); do
  for load in single mix; do
    file=$(scenario "plateau-$load" "$(printf 'warmup = "5s"\nduration = "30s"\nrate = %s' "$plateau")")
    run "$file" >"$work/plateau-$load-$round.txt"
    echo "== $load at the mix's plateau rate, $plateau req/s, round $round"
    grep -E "$rows" "$work/plateau-$load-$round.txt"
  done
done
for load in single mix; do
  rate=$((saturation[$load] * 8 / 10))
  file=$(scenario "own-$load" "$(printf 'warmup = "5s"\nduration = "30s"\nrate = %s' "$rate")")
  run "$file" >"$work/own-$load.txt"
  echo "== $load at 80% of its own saturation, $rate req/s"
  grep -E "$rows" "$work/own-$load.txt"
done
