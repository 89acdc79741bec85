#!/usr/bin/env bash
# A step from cold (BENCHMARKS.md, issue 15): the ramp experiment's 100 functions of Zipf
# popularity on three fresh nodes (each function compiled on its home node at start,
# nowhere else), loaded at RATE requests/s (open loop) from the first second for 30 s,
# with no ramp. Prints throughput and p50/p99 second by second, and the summary.
# Usage: scripts/step-experiment.sh [RATE] (default 7960, the ramp's plateau here). Needs
# .edge-ramp/ from scripts/ramp-experiment.sh (its modules and cluster files).
set -euo pipefail
rate=${1:-7960}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
work=.edge-ramp
if [ ! -f "$work/after.toml" ] || [ ! -f "$work/requests.toml" ]; then
  echo "step-experiment: no $work/after.toml: run scripts/ramp-experiment.sh first" >&2
  exit 2
fi
cargo build --workspace --bins --locked
bin=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/debug
printf 'target = "https://localhost"\nwarmup = "0s"\nconnections = 8\ntimeout = "10s"\nduration = "30s"\nrate = %s\n' \
  "$rate" | cat - "$work/requests.toml" >"$work/step.toml"
"$bin/edge-loadtest" compare --quiet --clusters "after=$work/after.toml" \
  --scenario "$work/step.toml" --keep "$work/step-cluster" --json "$work/step.json" |
  tee "$work/step.txt"
python3 - "$work/step.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))["after"]
print("second  answered   p50 ms   p99 ms")
for i, s in enumerate(report["per_second"]):
    print(f"{i:6}  {s['count']:8}  {s['p50_ms']:7.1f}  {s['p99_ms']:7.1f}")
PY
