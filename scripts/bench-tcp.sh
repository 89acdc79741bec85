#!/usr/bin/env bash
# The gateway's TCP ingress (HTTP/1.1 and HTTP/2 over TLS), `hello` through one gateway and
# one node on loopback: the time of each of 200 sequential requests on one kept-alive
# connection (curl), then wrk at 16 connections for 10 s. Needs curl and wrk (Debian
# packages; installed if missing when run as root).
#   scripts/bench-tcp.sh            # the binaries of this checkout
#   BIN=/path/to/bins scripts/bench-tcp.sh   # other edge, edge-node and edge-gateway builds
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if ! command -v wrk >/dev/null && [ "$(id -u)" -eq 0 ]; then
  apt-get install -y -qq wrk >/dev/null
fi
source "$root/scripts/one-node-cluster.sh"
url="https://$addr/hello"
ca="$dir/edge/certs/ca.pem"
urls=()
for _ in $(seq 1 200); do urls+=("$url"); done
for proto in --http1.1 --http2; do
  # time_total of each transfer (bodies go to stdout too, hence the marker); the first
  # includes the TLS handshake and is left out.
  curl -s "$proto" --cacert "$ca" -w 'time_total %{time_total}\n' "${urls[@]}" |
    grep -o 'time_total [0-9.]*' | cut -d' ' -f2 | tail -n +2 | sort -n |
    awk -v p="$proto" '{t[NR]=$1} END {printf "curl %s, 199 sequential requests on one connection: p50 %.2f ms, p90 %.2f ms, max %.2f ms\n", p, t[int(NR*0.5)]*1000, t[int(NR*0.9)]*1000, t[NR]*1000}'
done
echo "wrk, HTTP/1.1, 16 connections, 2 threads, 10 s:"
wrk -t2 -c16 -d10s "$url" | grep -E 'Requests/sec|Latency'
