#!/usr/bin/env bash
# Side-by-side benchmark on loopback: direct TCP, linkgate (connect -> serve, two hops, full
# linkgate/1 handshake), and, when installed, haproxy (TCP mode, one hop, no auth), spiped -f
# and spiped default (two hops). Prints one table with ratios against direct.
#
#   bench/compare.sh                 # all chains, 3 rounds of 3 s per measurement
#   ROUNDS=1 SECONDS_EACH=2 IDLE_CONNECTIONS=1000 bench/compare.sh   # quicker
#
# Peers: apt-get install spiped haproxy. Everything listens on 127.0.0.1 ports 19000-19099,
# every process it starts is ended by PID on exit, and each measurement is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
SECONDS_EACH=${SECONDS_EACH:-3}
WORKERS=${WORKERS:-32}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-5000}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cargo build --release --quiet --workspace
LG=$PWD/target/release/linkgate
LOADGEN=$PWD/target/release/linkgate-loadgen
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

start() { "$@" >>"$WORK/servers.log" 2>&1 & PIDS+=($!); LAST_PID=$!; }
wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "port $1 never opened; see $WORK/servers.log" >&2
    cat "$WORK/servers.log" >&2
    exit 1
}
field() { sed -n "s/.*\b$1=\([^ ]*\).*/\1/p"; }
median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
# A measurement that fails is reported as such; it must not lose the rest of the run.
bounded() { timeout $((SECONDS_EACH + 60)) "$@" || echo "failed: $*" >&2; }

mkdir -p "$WORK/keys" && chmod 700 "$WORK/keys"
"$LG" keygen --out "$WORK/keys/bench.key" >/dev/null
head -c 32 /dev/urandom >"$WORK/spiped.key"

# Upstreams: an echo server (rate, idle) and a sink (throughput), shared by every chain.
ECHO=19001 SINK=19002
start "$LOADGEN" echo --listen 127.0.0.1:$ECHO
start "$LOADGEN" sink --listen 127.0.0.1:$SINK
wait_port $ECHO; wait_port $SINK

# Each chain: "name entry-to-echo entry-to-sink pids-of-its-echo-side-proxies".
CHAINS=("direct $ECHO $SINK -")

linkgate_chain() { # $1 serve port, $2 connect port, $3 upstream
    start "$LG" -q serve --listen 127.0.0.1:$1 --upstream 127.0.0.1:$3 --keys "$WORK/keys" \
        --max-handshakes-per-source 1024 --allow-plain
    SERVE_PID=$LAST_PID
    start "$LG" -q connect --listen 127.0.0.1:$2 --server 127.0.0.1:$1 --key "$WORK/keys/bench.key" \
        --mode plain
    CONNECT_PID=$LAST_PID
    wait_port "$1"; wait_port "$2"
}
linkgate_chain 19011 19012 $ECHO
LINKGATE_PIDS="$SERVE_PID,$CONNECT_PID"
linkgate_chain 19013 19014 $SINK
CHAINS+=("linkgate 19012 19014 $LINKGATE_PIDS")

HAVE_HAPROXY=0; HAVE_SPIPED=0
command -v haproxy >/dev/null && HAVE_HAPROXY=1
command -v spiped >/dev/null && HAVE_SPIPED=1

haproxy_chain() { # $1 echo frontend, $2 sink frontend
    cat >"$WORK/haproxy-$1.cfg" <<EOF
global
    maxconn 9000
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend echo
    bind 127.0.0.1:$1
    default_backend echo
backend echo
    server echo 127.0.0.1:$ECHO
frontend sink
    bind 127.0.0.1:$2
    default_backend sink
backend sink
    server sink 127.0.0.1:$SINK
EOF
    start haproxy -db -f "$WORK/haproxy-$1.cfg"
    HAPROXY_PID=$LAST_PID
    wait_port "$1"; wait_port "$2"
}
if [ $HAVE_HAPROXY = 1 ]; then
    haproxy_chain 19041 19042
    CHAINS+=("haproxy 19041 19042 $HAPROXY_PID")
fi

spiped_pair() { # $1 decrypt port, $2 encrypt port, $3 upstream, $4 extra flags
    start spiped -d -F -n 0 $4 -s "[127.0.0.1]:$1" -t "[127.0.0.1]:$3" -k "$WORK/spiped.key"
    SPIPED_D=$LAST_PID
    start spiped -e -F -n 0 $4 -s "[127.0.0.1]:$2" -t "[127.0.0.1]:$1" -k "$WORK/spiped.key"
    SPIPED_E=$LAST_PID
    wait_port "$1"; wait_port "$2"
}
if [ $HAVE_SPIPED = 1 ]; then
    spiped_pair 19021 19022 $ECHO -f; SPIPED_F_PIDS="$SPIPED_D,$SPIPED_E"
    spiped_pair 19023 19024 $SINK -f
    CHAINS+=("spiped-f 19022 19024 $SPIPED_F_PIDS")
    spiped_pair 19031 19032 $ECHO ""; SPIPED_PIDS="$SPIPED_D,$SPIPED_E"
    spiped_pair 19033 19034 $SINK ""
    CHAINS+=("spiped 19032 19034 $SPIPED_PIDS")
fi

# CPU time (user + system, clock ticks) used so far by a comma-separated list of pids.
cpu_ticks() {
    local total=0 pid
    for pid in ${1//,/ }; do
        [ "$pid" = - ] && continue
        total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    echo "$total"
}
TICK=$(getconf CLK_TCK)

# (a) connection rate and (c) throughput, rounds interleaved across chains so drift hits all.
# Also per chain: the CPU its proxies spend per connection, and latency with 1 worker (unloaded).
declare -A RATE P50 P99 P999 T1 T8 CPU U50 U99
LIB=""
for round in $(seq "$ROUNDS"); do
    for chain in "${CHAINS[@]}"; do
        read -r name echo_port sink_port pids <<<"$chain"
        before=$(cpu_ticks "$pids")
        out=$(bounded "$LOADGEN" rate --target 127.0.0.1:$echo_port --workers "$WORKERS" --duration "${SECONDS_EACH}s")
        after=$(cpu_ticks "$pids")
        CPU[$name]+="$(awk -v t=$((after - before)) -v r="$(field rounds <<<"$out")" -v hz="$TICK" 'BEGIN { printf "%.0f", t / hz / r * 1e6 }') "
        RATE[$name]+="$(field conn_per_s <<<"$out") "; P50[$name]+="$(field p50_us <<<"$out") "
        P99[$name]+="$(field p99_us <<<"$out") "; P999[$name]+="$(field p999_us <<<"$out") "
        out=$(bounded "$LOADGEN" rate --target 127.0.0.1:$echo_port --workers 1 --duration 1s)
        U50[$name]+="$(field p50_us <<<"$out") "; U99[$name]+="$(field p99_us <<<"$out") "
        out=$(bounded "$LOADGEN" throughput --target 127.0.0.1:$sink_port --streams 1 --duration "${SECONDS_EACH}s")
        T1[$name]+="$(field mib_per_s <<<"$out") "
        out=$(bounded "$LOADGEN" throughput --target 127.0.0.1:$sink_port --streams 8 --duration "${SECONDS_EACH}s")
        T8[$name]+="$(field mib_per_s <<<"$out") "
        echo "round $round $name: conn/s so far [${RATE[$name]% }]" >&2
    done
    # (b) the same loop at library level, in one process: the gate without the proxies.
    LIB+="$(bounded "$LOADGEN" rate-lib --workers "$WORKERS" --duration "${SECONDS_EACH}s" | field conn_per_s) "
done

# (d) idle memory: fresh proxy processes, so earlier rounds' allocations don't blur the figure.
declare -A IDLE
idle() { # $1 name, $2 entry port, then the pids to measure
    local name=$1 port=$2; shift 2
    local args=(); for pid in "$@"; do args+=(--pid "$pid"); done
    local out
    out=$(timeout 120 "$LOADGEN" idle --target 127.0.0.1:$port --connections "$IDLE_CONNECTIONS" "${args[@]}" || true)
    IDLE[$name]=$(field kib_per_conn <<<"$out")
    local failed; failed=$(field failed <<<"$out")
    [ -n "${IDLE[$name]}" ] || IDLE[$name]="failed"
    [ "${failed:-0}" = 0 ] || IDLE[$name]+=" ($failed of $IDLE_CONNECTIONS failed)"
    echo "idle $name: ${IDLE[$name]} KiB/connection" >&2
}
linkgate_chain 19051 19052 $ECHO; idle linkgate 19052 "$SERVE_PID" "$CONNECT_PID"
if [ $HAVE_HAPROXY = 1 ]; then haproxy_chain 19061 19062; idle haproxy 19061 "$HAPROXY_PID"; fi
if [ $HAVE_SPIPED = 1 ]; then
    spiped_pair 19071 19072 $ECHO -f; idle spiped-f 19072 "$SPIPED_D" "$SPIPED_E"
    spiped_pair 19081 19082 $ECHO ""; idle spiped 19082 "$SPIPED_D" "$SPIPED_E"
fi

m() { local v; v=$(tr ' ' '\n' <<<"$1" | sed '/^$/d' | median); echo "${v:-–}"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
direct_rate=$(m "${RATE[direct]}"); direct_t1=$(m "${T1[direct]}"); direct_t8=$(m "${T8[direct]}")
direct_p99=$(m "${P99[direct]}")

echo
echo "linkgate bench/compare.sh — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, medians of $ROUNDS rounds of ${SECONDS_EACH}s, $WORKERS workers"
echo
direct_u99=$(m "${U99[direct]}")
echo "| chain | conn/s | × direct | proxy CPU µs/conn | p50 µs | p99 µs | p99 × direct | p999 µs | 1-worker p50/p99 µs | 1-worker p99 × direct | MiB/s 1 stream | × direct | MiB/s 8 streams | × direct | KiB per idle conn |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for chain in "${CHAINS[@]}"; do
    read -r name _ _ pids <<<"$chain"
    rate=$(m "${RATE[$name]}"); t1=$(m "${T1[$name]}"); t8=$(m "${T8[$name]}"); p99=$(m "${P99[$name]}")
    u99=$(m "${U99[$name]}"); cpu=$([ "$pids" = - ] && echo – || m "${CPU[$name]}")
    echo "| $name | $rate | $(ratio "$rate" "$direct_rate") | $cpu | $(m "${P50[$name]}") | $p99 | $(ratio "$p99" "$direct_p99") | $(m "${P999[$name]}") | $(m "${U50[$name]}")/$u99 | $(ratio "$u99" "$direct_u99") | $t1 | $(ratio "$t1" "$direct_t1") | $t8 | $(ratio "$t8" "$direct_t8") | ${IDLE[$name]:-–} |"
done
echo
lib=$(m "$LIB")
echo "(b) library level, client SDK ↔ GatedListener in one process: $lib conn/s ($(ratio "$lib" "$direct_rate") × direct), rounds: [${LIB% }]"
echo
echo "all rounds (conn/s): $(for c in "${CHAINS[@]}"; do read -r n _ <<<"$c"; printf '%s=[%s] ' "$n" "${RATE[$n]% }"; done)"
echo "all rounds (MiB/s, 1 stream): $(for c in "${CHAINS[@]}"; do read -r n _ <<<"$c"; printf '%s=[%s] ' "$n" "${T1[$n]% }"; done)"
