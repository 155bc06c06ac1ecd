#!/usr/bin/env bash
# The soak of RELIABILITY.md: CONNECTIONS connections of mixed sizes (0 B to 4 MiB each way)
# through `linkgate connect` (plain, sealed and sealed-fs entries in turn) → `linkgate serve` →
# the soak upstream, with ~1 % through a connect holding an impostor's key and ~3 % of the honest
# ones reset by the upstream halfway. Checked: every completed transfer by SHA-256 both ways,
# every reset arriving at the client as a reset (never a clean end), impostors reaching nothing
# upstream, and the gate's and connects' descriptors and memory back to their baseline after.
#
#   bench/soak.sh                      # 12,000 connections (a few minutes)
#   CONNECTIONS=2000 bench/soak.sh     # a quick one
#
# Settings (environment): CONNECTIONS (12000), ROUNDS (2: the soak is repeated, and memory must
# not keep growing round after round), CONCURRENCY (32), PORT (29400: uses PORT..PORT+5), BUILD (1). Everything listens on 127.0.0.1; every process started here is stopped by PID.
set -uo pipefail
cd "$(dirname "$0")/.."

CONNECTIONS=${CONNECTIONS:-12000}
ROUNDS=${ROUNDS:-2}
CONCURRENCY=${CONCURRENCY:-32}
PORT=${PORT:-29400}
BUILD=${BUILD:-1}

log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

if [ "$BUILD" = 1 ]; then
    log "building (release)"
    cargo build --release --locked -q -p linkgate-cli -p linkgate-loadgen || exit 1
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/linkgate-soak.XXXXXX")
PIDS=()
cleanup() {
    [ ${#PIDS[@]} -gt 0 ] && kill "${PIDS[@]}" 2> /dev/null && wait "${PIDS[@]}" 2> /dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
for bin in linkgate linkgate-loadgen; do cp "target/release/$bin" "$WORK/"; done
LG="$WORK/linkgate"
LOADGEN="$WORK/linkgate-loadgen"
mkdir -m 700 "$WORK/keys" "$WORK/impostor"
"$LG" keygen --out "$WORK/keys/soak.key" > /dev/null 2>&1 || exit 1
# The same id with other bytes: what a client with a stale or stolen-id key would hold.
"$LG" keygen --out "$WORK/impostor/soak.key" > /dev/null 2>&1 || exit 1

start() { # NAME COMMAND...: starts a process, logging to $WORK/NAME.log
    local name=$1
    shift
    "$@" 2> "$WORK/$name.log" > /dev/null &
    PIDS+=($!)
    eval "PID_${name//-/_}=$!"
}
wait_listening() { # PORT
    for _ in $(seq 100); do
        (exec 3<> "/dev/tcp/127.0.0.1/$1") 2> /dev/null && return 0
        sleep 0.05
    done
    log "nothing listens on $1"
    exit 1
}

start upstream "$LOADGEN" soak-upstream --listen "127.0.0.1:$PORT"
wait_listening "$PORT"
# The connects and the impostor share 127.0.0.1 here, so the gate would soon refuse that source
# for the impostor's failures (reliability.sh measures penalties); the soak is about the data.
start serve "$LG" serve --listen "127.0.0.1:$((PORT + 1))" --upstream "127.0.0.1:$PORT" \
    --keys "$WORK/keys" --allow-plain --penalty-exempt 127.0.0.1/32
wait_listening $((PORT + 1))
port=$((PORT + 2))
entries=()
for mode in plain sealed sealed-fs; do
    start "connect-$mode" "$LG" connect --listen "127.0.0.1:$port" --server "127.0.0.1:$((PORT + 1))" \
        --key "$WORK/keys/soak.key" --mode "$mode"
    entries+=(--entry "$mode=127.0.0.1:$port")
    port=$((port + 1))
done
start impostor "$LG" connect --listen "127.0.0.1:$port" --server "127.0.0.1:$((PORT + 1))" \
    --key "$WORK/impostor/soak.key"
for p in $(seq $((PORT + 2)) "$port"); do wait_listening "$p"; done
GATES=("$PID_serve" "$PID_connect_plain" "$PID_connect_sealed" "$PID_connect_sealed_fs" "$PID_impostor")
NAMES=(serve connect-plain connect-sealed connect-sealed-fs impostor)

footprint() { # prints "name rss_kib fds" per process
    local i
    for i in "${!GATES[@]}"; do
        echo "${NAMES[$i]} $(awk '/VmRSS/ { print $2 }' "/proc/${GATES[$i]}/status") $(ls "/proc/${GATES[$i]}/fd" | wc -l)"
    done
}
soak() { # CONNECTIONS SEED
    "$LOADGEN" soak "${entries[@]}" --impostor "127.0.0.1:$port" --upstream "127.0.0.1:$PORT" \
        --connections "$1" --concurrency "$CONCURRENCY" --seed "$2"
}

log "warm-up: 300 connections (allocators and buffer pools reach their working size)"
soak 300 2 > "$WORK/warmup.out" || { cat "$WORK/warmup.out"; log "the warm-up failed"; exit 1; }
sleep 2
footprint > "$WORK/before.txt"
started=$(date +%s)
status=0
for round in $(seq "$ROUNDS"); do
    log "soak round $round: $CONNECTIONS connections, $CONCURRENCY at a time"
    soak "$CONNECTIONS" "$round" > "$WORK/soak.out" || status=1
    sleep 2
    footprint > "$WORK/after-$round.txt"
    echo "Round $round: $(cat "$WORK/soak.out")"
done
elapsed=$(($(date +%s) - started))
echo
printf '| process | RSS before (KiB) |'
for round in $(seq "$ROUNDS"); do printf ' after round %s |' "$round"; done
printf ' fds before | fds after |\n|---|---:|'
for round in $(seq "$ROUNDS"); do printf -- '---:|'; done
printf -- '---:|---:|\n'
fds_ok=1
while read -r name rss fds; do
    printf '| %s | %s |' "$name" "$rss"
    for round in $(seq "$ROUNDS"); do
        printf ' %s |' "$(awk -v n="$name" '$1 == n { print $2 }' "$WORK/after-$round.txt")"
    done
    last=$(awk -v n="$name" '$1 == n { print $3 }' "$WORK/after-$ROUNDS.txt")
    printf ' %s | %s |\n' "$fds" "$last"
    [ "$fds" = "$last" ] || fds_ok=0
done < "$WORK/before.txt"
echo
denied=$(grep -c "connection rejected" "$WORK/serve.log")
echo "Gate log: $(grep -c ' admitted ' "$WORK/serve.log") admission lines, $denied rejection lines (rate-limited per source and reason); $elapsed s for the soak."
[ "$fds_ok" = 1 ] || { echo "descriptors did not return to their baseline"; exit 1; }
exit $status
