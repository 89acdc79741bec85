# Sourced: `edge_up BIN CONFIG DIR` starts `BIN/edge up --config CONFIG --dir DIR` in the
# background, its output in DIR.log, and returns once the cluster is up (its functions
# deployed at the gateway). Sets `up` (its pid: `kill $up` stops it) and `addr` (the
# gateway's users' address). Gives up after 120 s, with the log on stderr.
edge_up() {
  "$1/edge" up --config "$2" --dir "$3" >"$3.log" 2>&1 &
  up=$!
  for _ in $(seq 1 1200); do
    grep -qs 'Ctrl-C stops the cluster' "$3.log" && break
    sleep 0.1
  done
  addr=$(grep -o 'users connect to https://[^ ]*' "$3.log" | cut -d/ -f3)
  if ! grep -qs 'Ctrl-C stops the cluster' "$3.log"; then
    cat "$3.log" >&2
    return 1
  fi
}
