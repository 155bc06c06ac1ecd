#!/usr/bin/env bash
# Time to first response byte of short request/response connections across a simulated WAN
# (bench/wan/wan.sh: DELAY_MS each way between two network namespaces), for:
#
#   direct          the client connects to the echo server across the WAN
#   linkgate        connect (sealed-fs) → across the WAN → serve → echo: one TCP and one
#                   linkgate handshake across the WAN per connection
#   linkgate-mux    connect --mux → across the WAN → serve → echo: each connection a stream of
#                   a tunnel set up before the run (the first connection after start pays for it)
#   spiped          spiped -e → across the WAN → spiped -d → echo (default handshake)
#   spiped-f        the same with -f
#
# Each connection: connect to the chain's entry (in the client namespace), send 16 bytes, read
# the 16-byte echo, close (linkgate-loadgen rate with one worker: connections one after another).
# Reported: p50/p99 of that time per chain, ROUNDS rounds interleaved, medians of the rounds.
#
#   sudo bench/wan/ttfb.sh                 # DELAY_MS=20, ROUNDS=3, SECONDS_EACH=5
#
# Needs root, iproute2, python3, spiped (optional), and target/release/{linkgate,linkgate-loadgen}
# (BUILD=1, the default, builds them). Everything it starts is ended by PID on exit, and the
# namespaces are removed (wan.sh down).
set -uo pipefail
cd "$(dirname "$0")/../.."

DELAY_MS=${DELAY_MS:-20}
ROUNDS=${ROUNDS:-3}
SECONDS_EACH=${SECONDS_EACH:-5}
BUILD=${BUILD:-1}
CHAINS="direct linkgate linkgate-mux spiped spiped-f"
SERVER_IP=10.99.0.2
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

if [ "$BUILD" = 1 ]; then
    log "cargo build --release --workspace"
    cargo build --release --quiet --workspace || exit 1
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/linkgate-wan.XXXXXX")
mkdir -p "$WORK/bin" "$WORK/logs" "$WORK/keys" && chmod 700 "$WORK/keys"
cp target/release/linkgate target/release/linkgate-loadgen "$WORK/bin/"
LG=$WORK/bin/linkgate LOADGEN=$WORK/bin/linkgate-loadgen
PIDS=()
cleanup() {
    trap - EXIT INT TERM
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    sleep 0.3
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
    bench/wan/wan.sh down >/dev/null 2>&1
    if [ "${KEEP_WORK:-0}" = 1 ]; then echo "work directory kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bench/wan/wan.sh up "$DELAY_MS" >&2 || { echo "wan.sh up failed" >&2; exit 1; }
start() { # $1 namespace (server|client), $2 log name, then the command
    local ns=$1 name=$2; shift 2
    # Not through a shell function: its subshell's PID would be recorded, and killing that
    # leaves the command running. `ip netns exec` execs the command, so $! is the command.
    ip netns exec "lgw-$ns" "$@" >>"$WORK/logs/$name.log" 2>&1 &
    PIDS+=("$!")
}
"$LG" -q keygen --out "$WORK/keys/bench.key" >/dev/null || exit 1
head -c 32 /dev/urandom >"$WORK/spiped.key" && chmod 600 "$WORK/spiped.key"

# Server side: the echo on every address (reachable across the WAN for "direct"), then the gates.
start server echo "$LOADGEN" echo --listen 0.0.0.0:9000
start server serve "$LG" serve --listen $SERVER_IP:7700 --upstream 127.0.0.1:9000 --keys "$WORK/keys" --no-penalties
HAVE_SPIPED=0
if command -v spiped >/dev/null; then
    HAVE_SPIPED=1
    start server spiped-d spiped -d -F -n 0 -s "[$SERVER_IP]:7800" -t "[127.0.0.1]:9000" -k "$WORK/spiped.key"
    start server spiped-d-f spiped -d -F -n 0 -f -s "[$SERVER_IP]:7801" -t "[127.0.0.1]:9000" -k "$WORK/spiped.key"
fi
sleep 0.5
# Client side: the entries, all on the client namespace's loopback.
start client connect "$LG" connect --listen 127.0.0.1:7701 --server $SERVER_IP:7700 --key "$WORK/keys/bench.key"
start client connect-mux "$LG" connect --mux --listen 127.0.0.1:7702 --server $SERVER_IP:7700 --key "$WORK/keys/bench.key"
if [ $HAVE_SPIPED = 1 ]; then
    start client spiped-e spiped -e -F -n 0 -s "[127.0.0.1]:7810" -t "[$SERVER_IP]:7800" -k "$WORK/spiped.key"
    start client spiped-e-f spiped -e -F -n 0 -f -s "[127.0.0.1]:7811" -t "[$SERVER_IP]:7801" -k "$WORK/spiped.key"
fi
sleep 1
entry() {
    case $1 in
    direct) echo $SERVER_IP:9000 ;;
    linkgate) echo 127.0.0.1:7701 ;;
    linkgate-mux) echo 127.0.0.1:7702 ;;
    spiped) echo 127.0.0.1:7810 ;;
    spiped-f) echo 127.0.0.1:7811 ;;
    esac
}
ACTIVE=()
for chain in $CHAINS; do
    if [[ $chain == spiped* ]] && [ $HAVE_SPIPED = 0 ]; then log "$chain: skipped (spiped not installed)"; continue; fi
    out=$(timeout 20 ip netns exec lgw-client "$LOADGEN" rate --target "$(entry "$chain")" --workers 1 --duration 500ms 2>>"$WORK/logs/loadgen.log")
    if [ "$(sed -n 's/.*errors=\([0-9]*\).*/\1/p' <<<"$out")" = 0 ]; then
        ACTIVE+=("$chain")
    else
        log "$chain: failed its smoke test: '${out:-no output}'"
    fi
done
((${#ACTIVE[@]})) || { echo "no chain works; logs in $WORK/logs (KEEP_WORK=1 keeps them)" >&2; exit 1; }

declare -A P50 P99 RATE
field() { sed -n "s/.*\b$1=\([0-9.]*\).*/\1/p"; }
for round in $(seq "$ROUNDS"); do
    n=${#ACTIVE[@]}
    for k in $(seq 0 $((n - 1))); do
        chain=${ACTIVE[$(((k + round - 1) % n))]}
        out=$(timeout $((SECONDS_EACH + 30)) ip netns exec lgw-client "$LOADGEN" rate --target "$(entry "$chain")" \
            --workers 1 --duration "${SECONDS_EACH}s" 2>>"$WORK/logs/loadgen.log")
        P50[$chain]+="$(field p50_us <<<"$out") "
        P99[$chain]+="$(field p99_us <<<"$out") "
        RATE[$chain]+="$(field conn_per_s <<<"$out") "
        log "round $round $chain: $out"
    done
done

med() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -n | awk '{ v[NR] = $1 } END { if (NR) print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
ms() { awk -v u="$1" 'BEGIN { if (u == "") print "–"; else printf "%.1f", u / 1000 }'; }
list_ms() { local v out=""; for v in $1; do out+="$(ms "$v"), "; done; echo "${out%, }"; }
direct_p50=$(med "${P50[direct]:-}")
echo "# Time to first response byte across a simulated WAN — $(date -u +%Y-%m-%dT%H:%MZ)"
echo
echo "**Link.** bench/wan/wan.sh: two network namespaces joined by a userspace TUN delay link, ${DELAY_MS} ms each way (RTT ≈ $((2 * DELAY_MS)) ms; the link adds ≈ 0.5 ms). Machine: $(nproc) cores, Linux $(uname -r). linkgate git $(git rev-parse --short HEAD 2>/dev/null)."
echo
echo "**Run.** Per chain and round, one client makes connections one after another for ${SECONDS_EACH}s: connect, send 16 bytes, read the 16-byte echo, close. ROUNDS=$ROUNDS, interleaved; medians of the rounds' p50 and p99. The linkgate-mux tunnels were opened before the run."
echo
echo "| chain | p50 ms | p99 ms | p50 × direct | connections/s (one client) | p50 per round, ms |"
echo "|---|---:|---:|---:|---:|---|"
for chain in "${ACTIVE[@]}"; do
    p50=$(med "${P50[$chain]}") p99=$(med "${P99[$chain]}")
    ratio=$(awk -v a="$p50" -v b="$direct_p50" 'BEGIN { if (a != "" && b > 0) printf "%.2f", a / b; else print "–" }')
    echo "| $chain | $(ms "$p50") | $(ms "$p99") | $ratio | $(med "${RATE[$chain]}") | $(list_ms "${P50[$chain]}") |"
done
echo
mux=$(med "${P50[linkgate-mux]:-}")
if [ -n "$mux" ] && [ -n "$direct_p50" ]; then
    verdict=$(awk -v a="$mux" -v b="$direct_p50" 'BEGIN { print (a < b) ? "yes" : "**no**" }')
    echo "Target: linkgate-mux p50 below direct TCP's: $(ms "$mux") ms against $(ms "$direct_p50") ms: $verdict."
fi
