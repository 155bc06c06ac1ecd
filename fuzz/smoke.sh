#!/usr/bin/env bash
# Smoke run of every fuzz target: build them all, then fuzz each for a few seconds from its seeds
# (in a throwaway corpus, so fuzz/seeds/ is never written to). Fails on the first crash, leaving
# the reproducer in fuzz/artifacts/<target>/.
#
#   bash fuzz/smoke.sh        # 20 seconds per target
#   bash fuzz/smoke.sh 60     # 60 seconds per target
#
# Needs cargo-fuzz (cargo install cargo-fuzz). Works on stable Rust through RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-20}"
export RUSTC_BOOTSTRAP=1

start=$(date +%s)
cargo fuzz build
built=$(date +%s)
echo "== built every target in $((built - start))s"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in $(cargo fuzz list); do
    echo "== $target: ${seconds}s"
    mkdir -p "$scratch/$target"
    log="$scratch/$target.log"
    if ! cargo fuzz run "$target" "$scratch/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 > "$log" 2>&1; then
        # The assertion that failed and where libFuzzer put the input (the whole log is long).
        grep -E -A 3 'panicked at|ERROR: (libFuzzer|AddressSanitizer)' "$log" >&2 || true
        grep -E 'Test unit written' "$log" >&2 || tail -n 20 "$log" >&2
        echo "!! $target failed; the reproducer is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    grep -E '^#[0-9]+[[:space:]]+DONE|^stat::(number_of_executed_units|average_exec_per_sec)' "$log" || true
done
echo "== smoke run done in $(($(date +%s) - start))s ($((built - start))s building)"
