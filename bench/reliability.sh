#!/usr/bin/env bash
# Availability under attack, measured as a legitimate client sees it (RELIABILITY.md).
#
# A `linkgate serve` with default settings fronts an echo upstream. For each scenario an attacker
# (bench/attack: no key, many source addresses, never answers the CHALLENGE) runs while a
# legitimate client from another address makes ATTEMPTS sequential attempts: connect,
# authenticate (sealed-fs), echo one byte, close. An attempt succeeds if all of it takes at most
# 1 s. The attack starts WARMUP seconds before the first attempt and stops after the last.
#
#   a-hold       3,072 silent connections from 48 addresses (127.0.1.1-48), each reopened
#                100 ms after the gate closes it
#   b-reopen     silent connections opened at 400/s from the same 48 addresses
#   c-flood      4,096 workers reopening silent connections as fast as they can
#   d-*-v6       the same three from 1,100 addresses of one IPv6 /64 (2001:db8:1::/64), in a
#                network namespace this script creates (`unshare -n`; needs root)
#   e-blocked    c-flood with the gate's stderr on a pipe nobody reads
#   *-nopen      a-hold, b-reopen and c-flood against a gate run with --no-penalties: what
#                shedding and the bounds hold up alone
#   baseline     no attack
#
#   bench/reliability.sh                       # everything (about 5 minutes)
#   SCENARIOS="baseline c-flood" bench/reliability.sh
#
# Settings (environment): ATTEMPTS (100), WARMUP (5 s), PORT (29300: uses PORT..PORT+2),
# SCENARIOS (all), BUILD (1: cargo build --release first). Markdown on stdout, progress on
# stderr. Every process it starts is stopped by PID; everything listens on loopback or inside
# the namespace it creates.
set -uo pipefail
cd "$(dirname "$0")/.."

ATTEMPTS=${ATTEMPTS:-100}
WARMUP=${WARMUP:-5}
PORT=${PORT:-29300}
ALL="baseline a-hold b-reopen c-flood d-hold-v6 d-reopen-v6 d-flood-v6 e-blocked a-hold-nopen b-reopen-nopen c-flood-nopen"
SCENARIOS=${SCENARIOS:-$ALL}
BUILD=${BUILD:-1}

log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

# The attack each scenario runs (after --target/--sources, which depend on the family).
attack_of() {
    case $1 in
    a-hold* | d-hold-v6) echo "hold --connections 3072" ;;
    b-reopen* | d-reopen-v6) echo "reopen --rate 400" ;;
    c-flood* | d-flood-v6 | e-blocked) echo "flood --concurrency 4096" ;;
    baseline) echo "" ;;
    esac
}

# run_one NAME LISTEN_HOST SOURCES SOURCE_COUNT LEGIT_SOURCE: one scenario, one table row.
run_one() {
    local name=$1 host=$2 sources=$3 count=$4 legit_source=$5
    local dir="$WORK/$name" attack pids=()
    attack=$(attack_of "$name")
    mkdir -p "$dir"
    local listen="$host:$PORT" target="$host:$PORT"
    [[ $host == *:* ]] && { listen="[$host]:$PORT"; target="[$host]:$PORT"; }
    local flags=()
    [[ $name == *-nopen ]] && flags=(--no-penalties)
    "$LOADGEN" echo --listen "127.0.0.1:$((PORT + 1))" > /dev/null 2>&1 &
    pids+=($!)
    if [ "$name" = e-blocked ]; then
        # A pipe held open (so writes do not fail) that nobody reads: it fills after 64 KiB.
        mkfifo "$dir/stderr.fifo"
        exec 7<> "$dir/stderr.fifo"
        "$LG" serve --listen "$listen" --upstream "127.0.0.1:$((PORT + 1))" --keys "$WORK/keys" \
            --metrics "127.0.0.1:$((PORT + 2))" "${flags[@]}" 2> "$dir/stderr.fifo" &
    else
        "$LG" serve --listen "$listen" --upstream "127.0.0.1:$((PORT + 1))" --keys "$WORK/keys" \
            --metrics "127.0.0.1:$((PORT + 2))" "${flags[@]}" 2> "$dir/serve.log" &
    fi
    local serve=$!
    pids+=("$serve")
    local up=0
    for _ in $(seq 50); do
        if metrics > /dev/null 2>&1; then up=1; break; fi
        sleep 0.1
    done
    if [ $up = 0 ]; then
        log "$name: the gate did not start"
        echo "| $name | – | gate did not start | | | | | | |"
        kill "${pids[@]}" 2> /dev/null; wait "${pids[@]}" 2> /dev/null
        return
    fi
    local attacker=""
    if [ -n "$attack" ]; then
        # shellcheck disable=SC2086 # the attack's arguments are words
        "$ATTACK" $attack --target "$target" --sources "$sources" --source-count "$count" \
            --duration 10m > "$dir/attack.out" 2> "$dir/attack.err" &
        attacker=$!
        sleep "$WARMUP"
    fi
    log "$name: legitimate attempts (attack: ${attack:-none})"
    "$ATTACK" legit --target "$target" --source "$legit_source" --key "$WORK/keys/legit.key" \
        --attempts "$ATTEMPTS" > "$dir/legit.out" 2> "$dir/legit.err"
    local still=yes
    if [ -n "$attacker" ]; then
        kill -0 "$attacker" 2> /dev/null || still="no (the attacker had stopped)"
        kill -INT "$attacker" 2> /dev/null
        wait "$attacker"
    fi
    metrics > "$dir/metrics.txt" 2> /dev/null
    local rss fds
    rss=$(awk '/VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$serve/status" 2> /dev/null)
    fds=$(ls "/proc/$serve/fd" 2> /dev/null | wc -l)
    kill "${pids[@]}" 2> /dev/null
    wait "${pids[@]}" 2> /dev/null
    [ "$name" = e-blocked ] && exec 7>&-

    local legit attack_line lines dropped penalized
    legit=$(cat "$dir/legit.out")
    attack_line=$(cat "$dir/attack.out" 2> /dev/null)
    lines=$([ -f "$dir/serve.log" ] && wc -l < "$dir/serve.log" || echo "– (blocked)")
    dropped=$(sample linkgate_log_lines_dropped_total "$dir/metrics.txt")
    penalized=$(sample 'linkgate_sources_penalized{' "$dir/metrics.txt")
    local shed timeout
    shed=$(sample 'linkgate_handshakes_total{service="default",outcome="shed"}' "$dir/metrics.txt")
    timeout=$(sample 'linkgate_handshakes_total{service="default",outcome="timeout"}' "$dir/metrics.txt")
    local refused
    refused=$(grep '^linkgate_handshake_refusals_total' "$dir/metrics.txt" | awk '{ s += $NF } END { print s + 0 }')
    echo "| $name | $(field within_pct "$legit") % ($(field within_deadline "$legit")/$(field attempts "$legit")) | $(field p50_ms "$legit") / $(field p99_ms "$legit") / $(field max_ms "$legit") | $(field opened_per_s "$attack_line") | $(field open_max "$attack_line") | ${shed:-0} / ${timeout:-0} / $refused | ${penalized:-–} | $lines / ${dropped:-–} | $rss MiB, $fds fds |"
    [ -s "$dir/legit.err" ] && sed "s/^/    $name: /" "$dir/legit.err" >&2
    [ "$still" = yes ] || log "$name: $still"
    log "$name: $legit"
    [ -n "$attack_line" ] && log "$name: $attack_line"
}

field() { tr ' ' '\n' <<< "$2" | sed -n "s/^$1=//p" | head -1; }
sample() { grep -F "$1" "$2" 2> /dev/null | awk '{ print $NF }' | head -1; }

# GET /metrics from the gate, with bash's own /dev/tcp (no curl needed).
metrics() {
    exec 9<> "/dev/tcp/127.0.0.1/$((PORT + 2))" || return 1
    printf 'GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' >&9
    timeout 5 cat <&9 | sed '1,/^\r$/d'
    exec 9<&-
}

v6_part() {
    ip link set lo up
    # One local route per /64 (a single /48 route did not deliver here): the gate's, the
    # attackers' and the legitimate client's.
    for prefix in 2001:db8:0 2001:db8:1 2001:db8:2; do ip -6 route add local "$prefix::/64" dev lo; done
    sysctl -qw net.ipv6.ip_nonlocal_bind=1
    for name in $SCENARIOS; do
        case $name in
        d-*-v6) run_one "$name" 2001:db8::1 2001:db8:1::/64 1100 2001:db8:2::1 ;;
        esac
    done
}

if [ "${1:-}" = --inside-netns ]; then
    # Re-entered by the outer run: WORK and the binaries come from the environment.
    v6_part
    exit 0
fi

for name in $SCENARIOS; do
    [[ " $ALL " == *" $name "* ]] || { echo "unknown scenario '$name' (known: $ALL)" >&2; exit 2; }
done
ulimit -n "$(ulimit -Hn)" 2> /dev/null || true
if [ "$BUILD" = 1 ]; then
    log "building (release)"
    cargo build --release --locked -q -p linkgate-cli -p linkgate-attack -p linkgate-loadgen || exit 1
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/linkgate-reliability.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
# Copies, so a concurrent build cannot swap the binaries mid-run.
for bin in linkgate linkgate-attack linkgate-loadgen; do cp "target/release/$bin" "$WORK/"; done
export WORK LG="$WORK/linkgate" ATTACK="$WORK/linkgate-attack" LOADGEN="$WORK/linkgate-loadgen"
export ATTEMPTS WARMUP PORT SCENARIOS
mkdir -m 700 "$WORK/keys"
"$LG" keygen --out "$WORK/keys/legit.key" > /dev/null 2>&1 || { echo "keygen failed" >&2; exit 1; }

started=$(date +%s)
echo "| scenario | legitimate attempts within 1 s | p50 / p99 / max ms | attacker conn/s | attacker max open | shed / timed out / refused at accept | sources penalized at the end | gate log lines / dropped | gate at the end |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for name in $SCENARIOS; do
    case $name in
    baseline | a-hold* | b-reopen* | c-flood* | e-blocked)
        run_one "$name" 127.0.0.1 127.0.1.0/24 48 127.0.2.1
        ;;
    esac
done
if [[ " $SCENARIOS " == *"-v6 "* ]]; then
    if [ "$(id -u)" = 0 ] && unshare -n true 2> /dev/null; then
        unshare -n bash "$0" --inside-netns
    else
        log "IPv6 scenarios skipped: they need root for unshare -n"
        echo "| d-*-v6 | skipped: needs root (unshare -n) | | | | | | | |"
    fi
fi
echo
echo "Run: ATTEMPTS=$ATTEMPTS WARMUP=${WARMUP}s, $(nproc) CPUs, $(($(date +%s) - started)) s; attacker and gate on the same machine (the attacker on one thread)."
