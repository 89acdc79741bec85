#!/usr/bin/env bash
# Compares two builds under one benchmark script, runs alternated, so that the machine's
# drift from one minute to the next falls on both alike.
#   scripts/compare.sh keep DIR
#       copies this checkout's built binaries (edge, edge-node, edge-gateway,
#       edge-loadtest) into DIR, to compare against after a change
#   scripts/compare.sh run A B ROUNDS SCRIPT [ARGS...]
#       runs `BIN=A SCRIPT ARGS`, then `BIN=B SCRIPT ARGS`, ROUNDS times, and prints each
#       run's figures (throughput, fractions, CPU per request), labelled A and B
# SCRIPT is any script that takes BIN: scripts/bench-node.sh, scripts/bench-path.sh,
# scripts/bench-stream.sh, scripts/bench-tcp.sh, node/compare/serve.sh. A's and B's
# edge-loadtest is the one each run uses, so both must know the flags SCRIPT passes.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
binaries=(edge edge-node edge-gateway edge-loadtest)
usage() {
  sed -n '4,9p' "$0" >&2
  exit 2
}

case "${1:-}" in
  keep)
    [ $# -eq 2 ] || usage
    target=${CARGO_TARGET_DIR:-$root/target}
    (cd "$root" && cargo build --workspace --bins --quiet)
    mkdir -p "$2"
    for b in "${binaries[@]}"; do cp "$target/debug/$b" "$2/"; done
    echo "kept $(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet || echo '+changes') in $2"
    ;;
  run)
    [ $# -ge 5 ] || usage
    a=$2 b=$3 rounds=$4 script=$5
    shift 5
    for dir in "$a" "$b"; do
      for bin in "${binaries[@]}"; do
        [ -x "$dir/$bin" ] || { echo "compare: $dir/$bin is missing (scripts/compare.sh keep $dir)" >&2; exit 1; }
      done
    done
    case "$rounds" in '' | *[!0-9]* | 0) echo "compare: ROUNDS must be a positive count, not '$rounds'" >&2; exit 2 ;; esac
    [ "$rounds" -le 20 ] || { echo "compare: at most 20 rounds" >&2; exit 2; }
    figures='answered:|per answered|of the bare|of it$|edge-worker |tokio-rt-worker |^\| [0-9]'
    for round in $(seq 1 "$rounds"); do
      for side in A B; do
        dir=$a
        [ "$side" = B ] && dir=$b
        echo "== round $round, $side ($dir)"
        BIN=$dir "$script" "$@" 2>&1 | grep -E "$figures" || echo "   (no figures: the script failed or printed none)"
      done
    done
    ;;
  *) usage ;;
esac
