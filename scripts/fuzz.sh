#!/usr/bin/env bash
# Runs every fuzz target for a bounded time on the nightly toolchain, growing the kept
# corpus in fuzz/corpus/ (minimized afterwards), and prints what each run found.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 s, all targets)
#
# A crash stops its target and leaves the input in fuzz/artifacts/TARGET/. Fix it, then
# copy the input into fuzz/corpus/TARGET/: the stable `fuzz_corpus` tests replay the
# corpus in CI, so it stays a regression test.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/fuzz"
seconds=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(cgi_response deploy_body manifest gossip_values config_files scenario_files host_calls)
fi
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# Outside the clone, so a fresh clone does not rebuild wasmer for fuzzing.
target_dir=${EDGE_FUZZ_TARGET_DIR:-/var/cache/edge/fuzz-target}
cargo +nightly fuzz build --target-dir "$target_dir"
cargo +nightly fuzz build --sanitizer none --target-dir "$target_dir" host_calls
summary=()
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    before=$(ls "corpus/$target" | wc -l)
    log=$(mktemp)
    started=$(date +%s)
    status="no crash"
    # The host harness runs guest code, which wasmer runs on stacks of its own: AddressSanitizer
    # cannot follow the switch and reports false stack overflows there, so that target runs
    # without a sanitizer (coverage only). Its inputs carry a memory image; the parsers' need
    # no more than 1 KiB, which keeps the kept corpus small.
    sanitizer=address max_len=1024
    if [ "$target" = host_calls ]; then
        sanitizer=none max_len=8192
    fi
    # -rss_limit_mb: the host harness runs a real instance; -timeout: per input.
    if ! cargo +nightly fuzz run --sanitizer "$sanitizer" --target-dir "$target_dir" "$target" \
        "corpus/$target" -- -max_total_time="$seconds" -rss_limit_mb=4096 -timeout=10 \
        -max_len="$max_len" >"$log" 2>&1; then
        if grep -q "failed to build" "$log"; then
            status="BUILD FAILED"
        else
            status="CRASH (see fuzz/artifacts/$target/)"
        fi
    fi
    took=$(($(date +%s) - started))
    runs=$(grep -o 'Done [0-9]* runs' "$log" | grep -o '[0-9]*' || echo "?")
    if [ "$status" = "no crash" ]; then
        # Keep the smallest set of inputs that covers what the whole corpus covers.
        cargo +nightly fuzz cmin --sanitizer "$sanitizer" --target-dir "$target_dir" "$target" \
            "corpus/$target" >"$log.cmin" 2>&1 ||
            { tail -20 "$log.cmin"; status="$status, cmin failed"; }
        rm -f "$log.cmin"
    else
        tail -40 "$log"
    fi
    after=$(ls "corpus/$target" | wc -l)
    summary+=("$target: ${took} s, ${runs} runs, corpus ${before} -> ${after}, ${status}")
    rm -f "$log"
done
printf '%s\n' "${summary[@]}"
