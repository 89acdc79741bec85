#!/usr/bin/env bash
# Time to first byte and in all of a long answer (`stream?mib=N`, default 16) through the
# gateway and one node, over HTTP/1.1 on the gateway's TCP port (curl), RUNS times
# (default 5); then the node's peak resident memory (VmHWM) before and after them.
#   scripts/bench-stream.sh [MIB] [RUNS]        (BIN and WORKERS as for bench-node.sh)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
mib=${1:-16}
runs=${2:-5}
source "$root/scripts/one-node-cluster.sh"
node=$(pgrep -f "edge-node --config $dir/edge/node-1.toml")
url="https://127.0.0.1:${addr##*:}/stream?mib=$mib"
hwm() { grep VmHWM "/proc/$node/status" | awk '{print $2 " kB"}'; }
curl -s --http1.1 --cacert "$dir/edge/certs/ca.pem" "${url%mib=*}mib=0" >/dev/null
echo "node peak RSS before: $(hwm)"
echo "| run | first byte | whole answer | bytes |"
echo "| --- | --- | --- | --- |"
for i in $(seq 1 "$runs"); do
  curl -s --http1.1 --cacert "$dir/edge/certs/ca.pem" -o /dev/null \
    -w "| $i | %{time_starttransfer} s | %{time_total} s | %{size_download} |\n" "$url"
done
echo "node peak RSS after: $(hwm)"
