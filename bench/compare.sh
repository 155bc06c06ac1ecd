#!/usr/bin/env bash
# Side-by-side benchmark on loopback of linkgate and its peers, between the load generator's
# echo and sink upstreams (bench/loadgen):
#
#   direct             no proxy
#   linkgate-plain     connect --mode plain → serve --allow-plain            (2 hops, no sealing)
#   linkgate-sealed    connect --mode sealed → serve                         (2 hops, AES-256-GCM)
#   linkgate-sealed-fs connect (default mode) → serve                        (2 hops, + X25519)
#   linkgate-mux       connect --mux → serve: sealed-fs, every connection a stream of one of
#                      two long-lived tunnels                                (2 hops, 1 TCP hop)
#   haproxy            TCP mode, one hop, no auth, no crypto                  (reference only)
#   spiped             spiped -e → spiped -d, default handshake (DH: forward secrecy)
#   spiped-f           the same with -f (no DH, no forward secrecy)
#   stunnel-psk13      stunnel client → stunnel server, TLS 1.3 PSK, psk_dhe_ke (X25519: forward
#                      secrecy), TLS_AES_128_GCM_SHA256
#   stunnel-psk12      the same with TLS 1.2 PSK-AES256-GCM-SHA384 (no forward secrecy)
#
# Not run unless named in CHAINS, the floors of linkgate-mux (bench/floor, built by this script):
#   h2-floor           a bare h2 tunnel in linkgate-mux's shape: no records, no admission, no
#                      bounds, no metrics, no logs                            (2 hops, 1 TCP hop)
#   yamux-floor        the same with yamux, the other multiplexer issue 16 allows
#
# Per chain: connection rate (WORKERS workers) with the proxies' CPU per connection, loaded and
# unloaded (1 worker) p50/p99, 1- and 8-stream throughput with the proxies' CPU seconds per GiB,
# and memory per idle connection (fresh processes). Rounds are interleaved across chains (the
# order rotates each round) and every figure is the median of the rounds, with the min–max
# spread as its noise. Markdown on stdout; progress on stderr.
#
#   bench/compare.sh                                    # everything, defaults below (~7 min)
#   ROUNDS=1 SECONDS_EACH=2 IDLE_CONNECTIONS=500 bench/compare.sh          # quick check
#   CHAINS="direct linkgate-sealed-fs spiped" PORT_BASE=29000 bench/compare.sh
#
# Settings (environment): ROUNDS (3), SECONDS_EACH (3: each loaded measurement), WORKERS (32),
# UNLOADED_SECONDS (2: the 1-worker latency run), IDLE_CONNECTIONS (5000), PORT_BASE (19000;
# the run listens on 127.0.0.1 ports PORT_BASE … PORT_BASE+209 only, +229 with the floors),
# CHAINS (all of the above but the floors),
# BUILD (1: cargo build --release --workspace first; 0 to skip), LINKGATE and LOADGEN (binaries;
# default target/release/…). The binaries are copied once at the start, so a concurrent build
# cannot swap them mid-run.
#
# Peers (optional; a chain whose tool is missing is reported as skipped):
#   apt-get install spiped stunnel4 haproxy
# Every process the script starts is ended by PID on exit; every measurement is bounded in time,
# and a measurement or chain that fails is reported as such without ending the run.
set -uo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
SECONDS_EACH=${SECONDS_EACH:-3}
WORKERS=${WORKERS:-32}
UNLOADED_SECONDS=${UNLOADED_SECONDS:-2}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-5000}
PORT_BASE=${PORT_BASE:-19000}
DEFAULT_CHAINS="direct linkgate-plain linkgate-sealed linkgate-sealed-fs linkgate-mux haproxy spiped spiped-f stunnel-psk13 stunnel-psk12"
ALL_CHAINS="$DEFAULT_CHAINS h2-floor yamux-floor"
CHAINS=${CHAINS:-$DEFAULT_CHAINS}
BUILD=${BUILD:-1}
for var in ROUNDS SECONDS_EACH WORKERS UNLOADED_SECONDS IDLE_CONNECTIONS PORT_BASE; do
    [[ ${!var} =~ ^[1-9][0-9]*$ ]] || { echo "$var must be a positive integer, not '${!var}'" >&2; exit 2; }
done
PORT_SPAN=209
[[ " $CHAINS " == *-floor* ]] && PORT_SPAN=229
if ((PORT_BASE + PORT_SPAN > 65535)); then echo "PORT_BASE too high: the run needs PORT_BASE … PORT_BASE+$PORT_SPAN" >&2; exit 2; fi
for chain in $CHAINS; do
    [[ " $ALL_CHAINS " == *" $chain "* ]] || { echo "unknown chain '$chain' (known: $ALL_CHAINS)" >&2; exit 2; }
done
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/linkgate-compare.XXXXXX")
mkdir -p "$WORK/logs" "$WORK/bin"
PIDS=()
# End processes by PID: TERM, up to 3 s to exit, then KILL; reap them.
stop_pids() {
    local pid alive
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null; done
    for _ in $(seq 30); do
        alive=0
        for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.1
    done
    for pid in "$@"; do kill -KILL "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
    # Forget them, so that a reused PID is never signalled later.
    local keep=() p q drop
    for p in "${PIDS[@]}"; do
        drop=0
        for q in "$@"; do [ "$p" = "$q" ] && drop=1; done
        [ $drop = 0 ] && keep+=("$p")
    done
    PIDS=("${keep[@]}")
    return 0
}
cleanup() {
    trap - EXIT INT TERM
    ((${#PIDS[@]})) && stop_pids "${PIDS[@]}"
    if [ "${KEEP_WORK:-0}" = 1 ]; then echo "work directory kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
# Binaries: build, then pin copies for the whole run.
BUILD_NOTE="built by this run (cargo build --release --workspace)"
if [ "$BUILD" = 1 ]; then
    log "cargo build --release --workspace"
    if ! cargo build --release --quiet --workspace 2>"$WORK/build.log"; then
        BUILD_NOTE="**cargo build --release --workspace FAILED** (tree being edited?): measured the existing binaries"
        log "build failed; using the existing binaries. First errors:"
        grep -m5 -A3 '^error' "$WORK/build.log" >&2 || tail -20 "$WORK/build.log" >&2
    fi
else
    BUILD_NOTE="not rebuilt (BUILD=0)"
fi
FLOOR_DIR=$PWD/target/floor/release
FLOOR_NOTE="not rebuilt (BUILD=0)"
if [[ " $CHAINS " == *-floor* ]] && [ "$BUILD" = 1 ]; then
    # Its own workspace and lock file (yamux stays out of linkgate's), built beside linkgate's.
    log "cargo build --release (bench/floor)"
    if cargo build --release --quiet --locked --manifest-path bench/floor/Cargo.toml --target-dir target/floor \
        2>"$WORK/floor-build.log"; then
        FLOOR_NOTE="built by this run"
    else
        # Never measure binaries older than the source: the floors' chains will not start.
        FLOOR_DIR=""
        log "the floors' build failed; their chains will not start. First errors:"
        grep -m5 -A3 '^error' "$WORK/floor-build.log" >&2 || tail -20 "$WORK/floor-build.log" >&2
    fi
fi
LINKGATE_SRC=${LINKGATE:-$PWD/target/release/linkgate}
LOADGEN_SRC=${LOADGEN:-$PWD/target/release/linkgate-loadgen}
for bin in "$LINKGATE_SRC" "$LOADGEN_SRC"; do
    [ -x "$bin" ] || { echo "missing binary $bin (cargo build --release --workspace)" >&2; exit 1; }
done
cp "$LINKGATE_SRC" "$WORK/bin/linkgate" && cp "$LOADGEN_SRC" "$WORK/bin/linkgate-loadgen"
LG=$WORK/bin/linkgate
LOADGEN=$WORK/bin/linkgate-loadgen
bin_stamp() { echo "$(date -u -r "$1" +%Y-%m-%dT%H:%MZ), sha256 $(sha256sum <"$1" | cut -c1-12)"; }

# ---------------------------------------------------------------------------------------------
# Processes and ports. Listening is checked in /proc/net/tcp, never by connecting: a probe
# connection would count as a failed handshake at a gate.
start() { # $1 log name, then the command
    local name=$1; shift
    "$@" >>"$WORK/logs/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}
listening() { # $1 port: is something listening on it (any address)?
    local hex; hex=$(printf '%04X' "$1")
    awk -v p=":$hex" 'NR > 1 && $4 == "0A" && substr($2, length($2) - 4) == p { found = 1 } END { exit !found }' \
        /proc/net/tcp /proc/net/tcp6 2>/dev/null
}
wait_listening() { # $1 port, $2 pid that should be listening: up to 5 s
    for _ in $(seq 100); do
        listening "$1" && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}
CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { # user + system ticks so far of a comma-separated pid list ("-": none)
    local total=0 pid t
    for pid in ${1//,/ }; do
        [ "$pid" = - ] && continue
        # Fields after the ")" of the command name: utime and stime are the 12th and 13th.
        t=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12 + $13}') || return 1
        [ -n "$t" ] || return 1
        total=$((total + t))
    done
    echo "$total"
}

# ---------------------------------------------------------------------------------------------
# Keys and upstreams.
mkdir -p "$WORK/keys" && chmod 700 "$WORK/keys"
"$LG" -q keygen --out "$WORK/keys/bench.key" >/dev/null || { echo "linkgate keygen failed" >&2; exit 1; }
head -c 32 /dev/urandom >"$WORK/spiped.key" && chmod 600 "$WORK/spiped.key"
printf 'bench:%s\n' "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$WORK/stunnel.psk"
chmod 600 "$WORK/stunnel.psk"

ECHO=$((PORT_BASE + 1)) SINK=$((PORT_BASE + 2))
for port in $ECHO $SINK; do
    listening $port && { echo "port $port is already in use: choose another PORT_BASE" >&2; exit 1; }
done
start upstream-echo "$LOADGEN" echo --listen 127.0.0.1:$ECHO; ECHO_PID=$LAST_PID
start upstream-sink "$LOADGEN" sink --listen 127.0.0.1:$SINK
wait_listening $ECHO "$ECHO_PID" && wait_listening $SINK "$LAST_PID" || {
    echo "the upstreams did not start:" >&2; cat "$WORK/logs"/upstream-*.log >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# One hop pair of a chain, in front of one upstream: sets PAIR_ENTRY (port the client connects
# to) and PAIR_PIDS (comma-separated proxy pids, "-" for none). $1 chain, $2 first of its two
# ports, $3 upstream port, $4 log tag. Returns non-zero (and stops what it started) on failure.
have() { command -v "$1" >/dev/null 2>&1; }
chain_tool() {
    case $1 in
    direct | linkgate-* | *-floor) echo "" ;;
    haproxy) echo haproxy ;;
    spiped*) echo spiped ;;
    stunnel*) echo stunnel ;;
    esac
}
stunnel_conf() { # $1 file, $2 client|server, $3 accept port, $4 connect port, $5 chain
    {
        echo "foreground = yes"
        echo "pid ="
        # Quirks: with syslog on (the default) every log line also goes to the console through
        # syslog(3), and libwrap (on by default in Debian's build) reads /etc/hosts.* per
        # connection: together they cut the rate about tenfold. Nagle is left on by default.
        echo "syslog = no"
        echo "debug = warning"
        echo "libwrap = no"
        echo "socket = l:TCP_NODELAY=1"
        echo "socket = r:TCP_NODELAY=1"
        echo "PSKsecrets = $WORK/stunnel.psk"
        if [ "$5" = stunnel-psk13 ]; then
            # stunnel's PSK callbacks give TLS 1.3 a SHA-256 PSK: AES-256-GCM-SHA384 is refused
            # (handshake failure), so AES-128-GCM; OpenSSL offers only psk_dhe_ke, so X25519.
            echo "sslVersionMin = TLSv1.3"
            echo "ciphersuites = TLS_AES_128_GCM_SHA256"
            echo "curves = X25519"
        else
            echo "sslVersion = TLSv1.2"
            echo "ciphers = PSK-AES256-GCM-SHA384"
        fi
        echo "[$2]"
        [ "$2" = client ] && echo "client = yes" && echo "PSKidentity = bench"
        echo "accept = 127.0.0.1:$3"
        echo "connect = 127.0.0.1:$4"
    } >"$1"
}
start_pair() {
    local chain=$1 p1=$2 p2=$(($2 + 1)) up=$3 tag=$4 mine=() port
    PAIR_ENTRY=""; PAIR_PIDS="-"
    if [ "$chain" = direct ]; then PAIR_ENTRY=$up; return 0; fi
    for port in $p1 $p2; do
        if listening $port; then echo "port $port already in use" >"$WORK/logs/$tag.log"; return 1; fi
    done
    case $chain in
    linkgate-*)
        local mode=${chain#linkgate-} allow=() mux=()
        [ "$mode" = plain ] && allow=(--allow-plain)
        [ "$mode" = mux ] && mode=sealed-fs && mux=(--mux)
        start "$tag-serve" "$LG" -q serve --listen 127.0.0.1:$p1 --upstream 127.0.0.1:$up \
            --keys "$WORK/keys" --max-handshakes-per-source 1024 --drain-timeout 1s "${allow[@]}"
        mine+=("$LAST_PID"); wait_listening $p1 "$LAST_PID" || { stop_pids "${mine[@]}"; return 1; }
        start "$tag-connect" "$LG" -q connect --listen 127.0.0.1:$p2 --server 127.0.0.1:$p1 \
            --key "$WORK/keys/bench.key" --mode "$mode" --drain-timeout 1s "${mux[@]}"
        mine+=("$LAST_PID"); wait_listening $p2 "$LAST_PID" || { stop_pids "${mine[@]}"; return 1; }
        ;;
    *-floor)
        [ -n "$FLOOR_DIR" ] && [ -x "$FLOOR_DIR/$chain" ] || { echo "no $chain binary: bench/floor did not build" >"$WORK/logs/$tag.log"; return 1; }
        [ -x "$WORK/bin/$chain" ] || cp "$FLOOR_DIR/$chain" "$WORK/bin/$chain"
        start "$tag-server" "$WORK/bin/$chain" server 127.0.0.1:$p1 127.0.0.1:$up
        mine+=("$LAST_PID"); wait_listening $p1 "$LAST_PID" || { stop_pids "${mine[@]}"; return 1; }
        start "$tag-client" "$WORK/bin/$chain" client 127.0.0.1:$p2 127.0.0.1:$p1
        mine+=("$LAST_PID"); wait_listening $p2 "$LAST_PID" || { stop_pids "${mine[@]}"; return 1; }
        ;;
    haproxy)
        cat >"$WORK/$tag.cfg" <<EOF
global
    maxconn $((IDLE_CONNECTIONS + 2000))
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend in
    bind 127.0.0.1:$p2
    default_backend out
backend out
    server up 127.0.0.1:$up
EOF
        start "$tag" haproxy -db -f "$WORK/$tag.cfg"
        mine+=("$LAST_PID"); wait_listening $p2 "$LAST_PID" || { stop_pids "${mine[@]}"; return 1; }
        ;;
    spiped*)
        local flags=()
        [ "$chain" = spiped-f ] && flags=(-f)
        start "$tag-d" spiped -d -F -n 0 "${flags[@]}" -s "[127.0.0.1]:$p1" -t "[127.0.0.1]:$up" -k "$WORK/spiped.key"
        mine+=("$LAST_PID"); wait_listening $p1 "$LAST_PID" || { stop_pids "${mine[@]}"; return 1; }
        start "$tag-e" spiped -e -F -n 0 "${flags[@]}" -s "[127.0.0.1]:$p2" -t "[127.0.0.1]:$p1" -k "$WORK/spiped.key"
        mine+=("$LAST_PID"); wait_listening $p2 "$LAST_PID" || { stop_pids "${mine[@]}"; return 1; }
        ;;
    stunnel*)
        stunnel_conf "$WORK/$tag-server.conf" server $p1 $up "$chain"
        stunnel_conf "$WORK/$tag-client.conf" client $p2 $p1 "$chain"
        start "$tag-server" stunnel "$WORK/$tag-server.conf"
        mine+=("$LAST_PID"); wait_listening $p1 "$LAST_PID" || { stop_pids "${mine[@]}"; return 1; }
        start "$tag-client" stunnel "$WORK/$tag-client.conf"
        mine+=("$LAST_PID"); wait_listening $p2 "$LAST_PID" || { stop_pids "${mine[@]}"; return 1; }
        ;;
    esac
    PAIR_ENTRY=$p2
    PAIR_PIDS=$(IFS=,; echo "${mine[*]}")
}

# ---------------------------------------------------------------------------------------------
# Results: R[metric|chain] holds one value per round, space-separated.
declare -A R ENTRY_ECHO ENTRY_SINK PIDS_ECHO PIDS_SINK STATUS FIRST_ERROR
add() { R[$1|$2]+="$3 "; }
field() { sed -n "s/.*\b$1=\([^ ]*\).*/\1/p" | head -1; }
note_error() { # $1 chain, $2 text: keep the first error seen per chain
    [ -n "${FIRST_ERROR[$1]:-}" ] || FIRST_ERROR[$1]=$2
}
# Run a measurement bounded in time: stdout is the loadgen's line, its stderr goes to a log.
bounded() { # $1 seconds, then the command
    local limit=$1; shift
    timeout -k 5 "$limit" "$@" 2>>"$WORK/logs/loadgen.log"
}
chain_index() { local i=0 c; for c in $ALL_CHAINS; do i=$((i + 1)); [ "$c" = "$1" ] && echo $i; done; }

ACTIVE=()
for chain in $CHAINS; do
    tool=$(chain_tool "$chain")
    if [ -n "$tool" ] && ! have "$tool"; then
        STATUS[$chain]="skipped: $tool not installed"; log "$chain: ${STATUS[$chain]}"; continue
    fi
    base=$((PORT_BASE + 10 * $(chain_index "$chain")))
    if ! start_pair "$chain" "$base" $ECHO "$chain-echo"; then
        STATUS[$chain]="failed to start (echo side): $(tail -3 "$WORK/logs/$chain-echo"*.log 2>/dev/null | tr '\n' ' ')"
        log "$chain: ${STATUS[$chain]}"; continue
    fi
    ENTRY_ECHO[$chain]=$PAIR_ENTRY; PIDS_ECHO[$chain]=$PAIR_PIDS
    if ! start_pair "$chain" $((base + 2)) $SINK "$chain-sink"; then
        STATUS[$chain]="failed to start (sink side): $(tail -3 "$WORK/logs/$chain-sink"*.log 2>/dev/null | tr '\n' ' ')"
        log "$chain: ${STATUS[$chain]}"; continue
    fi
    ENTRY_SINK[$chain]=$PAIR_ENTRY; PIDS_SINK[$chain]=$PAIR_PIDS
    # Smoke test (also a warm-up): a few echo rounds and a short verified transfer.
    out=$(bounded 20 "$LOADGEN" rate --target 127.0.0.1:${ENTRY_ECHO[$chain]} --workers 2 --duration 300ms --round-timeout 5s)
    out2=$(bounded 30 "$LOADGEN" throughput --target 127.0.0.1:${ENTRY_SINK[$chain]} --duration 300ms --stall-timeout 10s)
    if [ "$(field errors <<<"$out")" != 0 ] || [ -z "$(field mib_per_s <<<"$out2")" ]; then
        STATUS[$chain]="failed its smoke test (rate: '${out:-no output}', throughput: '${out2:-no output}'; see logs)"
        log "$chain: ${STATUS[$chain]}"; continue
    fi
    STATUS[$chain]=ok
    ACTIVE+=("$chain")
    log "$chain: up (echo entry ${ENTRY_ECHO[$chain]} pids ${PIDS_ECHO[$chain]}; sink entry ${ENTRY_SINK[$chain]} pids ${PIDS_SINK[$chain]})"
done
((${#ACTIVE[@]})) || { echo "no chain could be started" >&2; exit 1; }

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
LOAD_ROUNDS=""
busy_compilers() { ps -eo comm= | grep -c -E '^(rustc|cc1|cc1plus|cargo|ld|clang)$' || true; }
LIMIT_LOADED=$((SECONDS_EACH + 40))
STARTED=$(date +%s)

# ---------------------------------------------------------------------------------------------
# Rounds: every active chain once per round, the order rotated each round.
for round in $(seq "$ROUNDS"); do
    LOAD_ROUNDS+="round $round: load $(cut -d' ' -f1 /proc/loadavg), $(busy_compilers) compiler processes; "
    n=${#ACTIVE[@]}
    for k in $(seq 0 $((n - 1))); do
        chain=${ACTIVE[$(((k + round - 1) % n))]}
        echo_port=${ENTRY_ECHO[$chain]} sink_port=${ENTRY_SINK[$chain]}
        pe=${PIDS_ECHO[$chain]} ps=${PIDS_SINK[$chain]}

        # Connection rate, WORKERS workers, with the echo-side proxies' CPU.
        before=$(cpu_ticks "$pe")
        out=$(bounded $LIMIT_LOADED "$LOADGEN" rate --target 127.0.0.1:$echo_port --workers "$WORKERS" --duration "${SECONDS_EACH}s")
        after=$(cpu_ticks "$pe")
        rounds=$(field rounds <<<"$out")
        if [ -n "$rounds" ] && [ "$rounds" -gt 0 ]; then
            add conn "$chain" "$(field conn_per_s <<<"$out")"
            add p50 "$chain" "$(field p50_us <<<"$out")"; add p99 "$chain" "$(field p99_us <<<"$out")"
            add errors "$chain" "$(field errors <<<"$out")"
            [ "$(field errors <<<"$out")" = 0 ] || note_error "$chain" "rate: $(field errors <<<"$out") errors in round $round (see loadgen.log)"
            if [ "$pe" != - ] && [ -n "$before" ] && [ -n "$after" ]; then
                add cpu_conn "$chain" "$(awk -v t=$((after - before)) -v r="$rounds" -v hz="$CLK_TCK" 'BEGIN { printf "%.0f", t / hz / r * 1e6 }')"
            fi
        else
            note_error "$chain" "rate failed in round $round: '${out:-no output}'"
        fi

        # Unloaded latency: one worker.
        out=$(bounded $((UNLOADED_SECONDS + 40)) "$LOADGEN" rate --target 127.0.0.1:$echo_port --workers 1 --duration "${UNLOADED_SECONDS}s")
        if [ -n "$(field p99_us <<<"$out")" ] && [ "$(field rounds <<<"$out")" != 0 ]; then
            add u50 "$chain" "$(field p50_us <<<"$out")"; add u99 "$chain" "$(field p99_us <<<"$out")"
            add uconn "$chain" "$(field conn_per_s <<<"$out")"
        else
            note_error "$chain" "unloaded rate failed in round $round: '${out:-no output}'"
        fi

        # Throughput, 1 and 8 streams, with the sink-side proxies' CPU per GiB.
        for streams in 1 8; do
            before=$(cpu_ticks "$ps")
            out=$(bounded $LIMIT_LOADED "$LOADGEN" throughput --target 127.0.0.1:$sink_port --streams $streams --duration "${SECONDS_EACH}s")
            after=$(cpu_ticks "$ps")
            bytes=$(field bytes <<<"$out")
            if [ -n "$bytes" ] && [ "$bytes" -gt 0 ]; then
                add "t$streams" "$chain" "$(field mib_per_s <<<"$out")"
                if [ "$ps" != - ] && [ -n "$before" ] && [ -n "$after" ]; then
                    add "cpu_gib$streams" "$chain" "$(awk -v t=$((after - before)) -v b="$bytes" -v hz="$CLK_TCK" 'BEGIN { printf "%.3f", t / hz / (b / 1073741824) }')"
                fi
            else
                note_error "$chain" "throughput ($streams streams) failed in round $round: '${out:-no output}'"
            fi
        done
        log "round $round/$ROUNDS $chain: conn/s [${R[conn|$chain]:-}] MiB/s 1 stream [${R[t1|$chain]:-}] 8 streams [${R[t8|$chain]:-}]"
    done
    # The same echo loop at library level in one process (sealed-fs): the gate without proxies.
    out=$(bounded $LIMIT_LOADED "$LOADGEN" rate-lib --workers "$WORKERS" --duration "${SECONDS_EACH}s" --mode sealed-fs)
    [ -n "$(field conn_per_s <<<"$out")" ] && add conn lib "$(field conn_per_s <<<"$out")"
done

# ---------------------------------------------------------------------------------------------
# Idle memory: fresh processes per chain (earlier rounds' allocations would blur the figure),
# IDLE_CONNECTIONS held through the echo upstream; RSS growth of all the chain's proxies.
declare -A IDLE_BY_PID
for chain in "${ACTIVE[@]}"; do
    [ "$chain" = direct ] && continue
    base=$((PORT_BASE + 100 + 10 * $(chain_index "$chain")))
    if ! start_pair "$chain" "$base" $ECHO "$chain-idle"; then
        note_error "$chain" "idle: the fresh pair did not start"; continue
    fi
    args=(); roles=()
    for pid in ${PAIR_PIDS//,/ }; do args+=(--pid "$pid"); done
    out=$(bounded 180 "$LOADGEN" idle --target 127.0.0.1:$PAIR_ENTRY --connections "$IDLE_CONNECTIONS" "${args[@]}")
    kib=$(field kib_per_conn <<<"$out")
    if [ -n "$kib" ]; then
        add idle "$chain" "$kib"
        add idle_held "$chain" "$(field connections <<<"$out")"
        add idle_failed "$chain" "$(field failed <<<"$out")"
        IDLE_BY_PID[$chain]=$(field kib_per_conn_by_pid <<<"$out")
        [ "$(field failed <<<"$out")" = 0 ] || note_error "$chain" "idle: $(field failed <<<"$out") of $IDLE_CONNECTIONS connections failed"
    else
        note_error "$chain" "idle failed: '${out:-no output}'"
    fi
    log "idle $chain: ${kib:-failed} KiB/connection (${IDLE_BY_PID[$chain]:-})"
    # stunnel 5.68 segfaults when it is sent SIGTERM while thousands of its connection threads
    # are still winding down: let them finish first (up to 10 s).
    if [[ $chain == stunnel* ]]; then
        for _ in $(seq 100); do
            busy=0
            for pid in ${PAIR_PIDS//,/ }; do
                threads=$(awk '/^Threads:/ { print $2 }' "/proc/$pid/status" 2>/dev/null)
                [ "${threads:-0}" -gt 3 ] && busy=1
            done
            [ $busy = 0 ] && break
            sleep 0.1
        done
    fi
    stop_pids ${PAIR_PIDS//,/ }
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
ELAPSED=$(($(date +%s) - STARTED))

# ---------------------------------------------------------------------------------------------
# Report.
vals() { echo "${R[$1|$2]:-}"; }
list() { local v; v=$(vals "$1" "$2" | xargs | sed 's/ /, /g'); echo "${v:-–}"; }
agg() { # $1 min|max|med, $2 values
    tr ' ' '\n' <<<"$2" | sed '/^$/d' | sort -g | awk -v what="$1" '
        { v[NR] = $1 }
        END {
            if (NR == 0) exit
            if (what == "min") print v[1]
            else if (what == "max") print v[NR]
            else if (NR % 2) print v[(NR + 1) / 2]
            else print (v[NR / 2] + v[NR / 2 + 1]) / 2
        }'
}
fmt() { # $1 decimals, $2 number (or empty)
    [ -n "$2" ] && awk -v d="$1" -v x="$2" 'BEGIN { printf "%.*f", d, x }' || printf '–'
}
med() { fmt "$1" "$(agg med "$(vals "$2" "$3")")"; }             # $1 decimals, metric, chain
medraw() { agg med "$(vals "$1" "$2")"; }
spread() { # $1 decimals, metric, chain: "min–max (±x%)"
    local v; v=$(vals "$2" "$3")
    local lo hi m; lo=$(agg min "$v"); hi=$(agg max "$v"); m=$(agg med "$v")
    [ -n "$m" ] || { printf '–'; return; }
    printf '%s–%s (±%s%%)' "$(fmt "$1" "$lo")" "$(fmt "$1" "$hi")" \
        "$(awk -v a="$lo" -v b="$hi" -v m="$m" 'BEGIN { if (m > 0) printf "%.0f", (b - a) / 2 / m * 100; else print "?" }')"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && b != "" && b > 0) printf "%.2f", a / b; else printf "–" }'; }

CPU_MODEL=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)
CPU_FAMILY=$(lscpu 2>/dev/null | awk -F: '/^CPU family/ { gsub(/ /, "", $2); f = $2 } /^Model:/ { gsub(/ /, "", $2); m = $2 } END { if (f != "") printf "family %s model %s", f, m }')
HYPERVISOR=$(lscpu 2>/dev/null | sed -n 's/^Hypervisor vendor: *//p' | head -1)
flags=$(grep -m1 '^flags' /proc/cpuinfo)
flag_list=""
for f in aes pclmulqdq avx2 vaes vpclmulqdq avx512f sha_ni; do
    if grep -qw "$f" <<<"$flags"; then flag_list+="$f yes, "; else flag_list+="**$f no**, "; fi
done
version() { "$@" 2>&1 | head -1; }
GIT_REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
GIT_DIRTY=$(git status --porcelain --untracked-files=no 2>/dev/null | wc -l)

echo "# linkgate bench/compare.sh — $(date -u +%Y-%m-%dT%H:%MZ)"
echo
echo "**Machine.** $(nproc) cores online; CPU: ${CPU_MODEL:-unknown} (${CPU_FAMILY:-?})${HYPERVISOR:+, under $HYPERVISOR}; flags: ${flag_list%, } (AES-GCM speed depends on aes/pclmulqdq and, for the widest code paths, vaes/vpclmulqdq/avx512); $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo); Linux $(uname -r)."
echo "Everything (load generator, upstreams and every proxy) shares these cores, so only ratios within this run mean anything."
echo
echo "**Load average** before the rounds: $LOAD_BEFORE; after the idle runs: $LOAD_AFTER. ${LOAD_ROUNDS%; }."
echo
echo "**Versions.** linkgate: $(version "$LG" --version), git $GIT_REV$([ "$GIT_DIRTY" -gt 0 ] && echo " with $GIT_DIRTY modified tracked files"), binary $(bin_stamp "$LINKGATE_SRC"); $BUILD_NOTE; $(version rustc -V)."
for chain in h2-floor yamux-floor; do
    [ -x "$WORK/bin/$chain" ] && echo "$chain: bench/floor at git $GIT_REV, binary $(bin_stamp "$FLOOR_DIR/$chain"); $FLOOR_NOTE."
done
have spiped && echo "spiped: $(version spiped -v)."
have stunnel && echo "stunnel: $(stunnel -version 2>&1 | grep -m1 '^stunnel' | sed 's/ on .*//'), $(stunnel -version 2>&1 | grep -m1 'Running')."
have haproxy && echo "haproxy: $(version haproxy -v | sed 's/ - https.*//')."
have openssl && echo "openssl (command): $(version openssl version)."
echo
echo "**Run.** ROUNDS=$ROUNDS SECONDS_EACH=$SECONDS_EACH WORKERS=$WORKERS UNLOADED_SECONDS=$UNLOADED_SECONDS IDLE_CONNECTIONS=$IDLE_CONNECTIONS PORT_BASE=$PORT_BASE (127.0.0.1:$PORT_BASE–$((PORT_BASE + PORT_SPAN))); rounds interleaved across chains, order rotated each round; medians of the rounds, spread = min–max over the rounds (± = half the spread over the median). $((ELAPSED / 60)) min $((ELAPSED % 60)) s of measuring."
echo
echo "Chains: direct = no proxy; linkgate-* = \`connect\` → \`serve\` (2 hops, linkgate/1 handshake; plain: no sealing; sealed: AES-256-GCM records; sealed-fs: + X25519, the default; mux: sealed-fs with \`connect --mux\`, each connection a stream of two tunnels opened before the run); haproxy = TCP mode, one hop, no auth (reference only); spiped = \`-e\` → \`-d\` (2 hops, AES-256-CTR + HMAC-SHA256; default handshake with 2048-bit DH, -f without); stunnel-psk13 = client → server stunnel, TLS 1.3 PSK with X25519 (psk_dhe_ke, forward secrecy), TLS_AES_128_GCM_SHA256; stunnel-psk12 = TLS 1.2 PSK-AES256-GCM-SHA384 (no forward secrecy). stunnel resumes sessions by default (kept).$([[ " $CHAINS " == *-floor* ]] && echo " h2-floor and yamux-floor (bench/floor) = bare h2 and yamux tunnels in linkgate-mux's shape (a single-threaded runtime and a tunnel per core, a stream per connection) with nothing of linkgate's: no records, no admission, no bounds, no metrics; what the multiplexer alone costs.")"
for chain in $CHAINS; do
    [ "${STATUS[$chain]:-}" = ok ] || echo "- **$chain: ${STATUS[$chain]:-not run}**"
done
echo

echo "Columns: *proxy CPU* is user + system time (\`/proc/PID/stat\`) of the chain's proxy processes during that run, per connection served or per GiB moved; *p50/p99* are of the loaded rate run; *unloaded* is the same loop with 1 worker for ${UNLOADED_SECONDS}s (the latency one client sees). Throughput runs last ${SECONDS_EACH}s per stream count."
echo
dr() { medraw "$1" direct; }
echo "## Connection rate ($WORKERS workers: connect, 16 bytes, echo, close) and latency"
echo
echo "| chain | conn/s | spread | × direct | proxy CPU µs/conn | p50 µs | p99 µs | unloaded p50 µs | unloaded p99 µs | spread (unloaded p99) | unloaded p99 × direct | errors |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for chain in $CHAINS; do
    [ "${STATUS[$chain]:-}" = ok ] || continue
    errs=$(vals errors "$chain" | tr ' ' '\n' | awk '{ s += $1 } END { print s + 0 }')
    echo "| $chain | $(med 0 conn "$chain") | $(spread 0 conn "$chain") | $(ratio "$(medraw conn "$chain")" "$(dr conn)") | $(med 0 cpu_conn "$chain") | $(med 0 p50 "$chain") | $(med 0 p99 "$chain") | $(med 0 u50 "$chain") | $(med 0 u99 "$chain") | $(spread 0 u99 "$chain") | $(ratio "$(medraw u99 "$chain")" "$(dr u99)") | $errs |"
done
echo
if [ -n "$(vals conn lib)" ]; then
    echo "Library level (\`rate-lib\`: \`linkgate::connect\` ↔ \`GatedListener\` in one process, sealed-fs, no proxy): $(med 0 conn lib) conn/s, spread $(spread 0 conn lib), $(ratio "$(medraw conn lib)" "$(dr conn)") × direct."
    echo
fi

echo "## Throughput (bytes counted and CRC-32 checked by the sink) and the proxies' CPU per GiB"
echo
echo "| chain | MiB/s 1 stream | spread | × direct | proxy CPU s/GiB, 1 stream | spread | MiB/s 8 streams | spread | × direct | proxy CPU s/GiB, 8 streams |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for chain in $CHAINS; do
    [ "${STATUS[$chain]:-}" = ok ] || continue
    echo "| $chain | $(med 0 t1 "$chain") | $(spread 0 t1 "$chain") | $(ratio "$(medraw t1 "$chain")" "$(dr t1)") | $(med 2 cpu_gib1 "$chain") | $(spread 2 cpu_gib1 "$chain") | $(med 0 t8 "$chain") | $(spread 0 t8 "$chain") | $(ratio "$(medraw t8 "$chain")" "$(dr t8)") | $(med 2 cpu_gib8 "$chain") |"
done
echo

echo "## Memory per idle connection ($IDLE_CONNECTIONS held, fresh processes, RSS growth over all the chain's proxy processes)"
echo
echo "| chain | KiB per idle connection | per process (pid: KiB) | held | failed |"
echo "|---|---:|---|---:|---:|"
for chain in $CHAINS; do
    [ "${STATUS[$chain]:-}" = ok ] || continue
    [ "$chain" = direct ] && continue
    echo "| $chain | $(med 2 idle "$chain") | ${IDLE_BY_PID[$chain]:-–} | $(med 0 idle_held "$chain") | $(med 0 idle_failed "$chain") |"
done
echo

# Ratios of the linkgate sealed chains against their peers.
cmp_cols="direct linkgate-plain linkgate-sealed-fs haproxy spiped spiped-f stunnel-psk13 stunnel-psk12"
echo "## linkgate mux, sealed-fs and sealed against the others (ratios of medians; > 1 = linkgate higher)"
echo
for lg in linkgate-mux linkgate-sealed-fs linkgate-sealed; do
    [ "${STATUS[$lg]:-}" = ok ] || continue
    echo "| $lg: metric | value |$(for c in $cmp_cols; do printf ' × %s |' "$c"; done)"
    echo "|---|---:|$(for _ in $cmp_cols; do printf -- '---:|'; done)"
    for metric in "conn:conn/s" "u99:unloaded p99 µs" "t1:MiB/s 1 stream" "t8:MiB/s 8 streams" "cpu_conn:proxy CPU µs/conn" "cpu_gib1:proxy CPU s/GiB (1 stream)" "idle:KiB per idle connection"; do
        key=${metric%%:*} name=${metric#*:}
        row="| $name | $(med 2 "$key" "$lg" | sed 's/\.00$//') |"
        for c in $cmp_cols; do row+=" $(ratio "$(medraw "$key" "$lg")" "$(medraw "$key" "$c")") |"; done
        echo "$row"
    done
    echo
done

# Targets (issue 10), with the worst case over the rounds: min of linkgate's rounds against the
# max of the peer's (for "higher is better"), so "met in every pairing" means beyond the noise.
echo "## Targets"
echo
echo "| target | linkgate | peer | ratio of medians | worst case over rounds | met? |"
echo "|---|---:|---:|---:|---:|---|"
target() { # $1 text, $2 metric, $3 chain, $4 peer chain, $5 factor
    local a b r w
    a=$(medraw "$2" "$3"); b=$(medraw "$2" "$4")
    r=$(ratio "$a" "$b")
    w=$(ratio "$(agg min "$(vals "$2" "$3")")" "$(agg max "$(vals "$2" "$4")")")
    local met
    met=$(awk -v r="$r" -v w="$w" -v f="$5" 'BEGIN {
        if (r == "–") print "not measured"
        else if (w != "–" && w >= f) print "yes"
        else if (r >= f) print "yes on medians, not beyond the noise"
        else print "**no**" }')
    echo "| $1 | $(fmt 0 "$a") | $(fmt 0 "$b") | $r | $w | $met |"
}
target "sealed-fs 1 stream ≥ 6× spiped (default) MiB/s" t1 linkgate-sealed-fs spiped 6
target "sealed-fs 1 stream ≥ 0.85× linkgate plain MiB/s" t1 linkgate-sealed-fs linkgate-plain 0.85
target "sealed-fs conn/s ≥ 5× spiped (default)" conn linkgate-sealed-fs spiped 5
target "sealed-fs conn/s ≥ 5× stunnel-PSK (TLS 1.3, forward secrecy)" conn linkgate-sealed-fs stunnel-psk13 5
target "sealed-fs conn/s ≥ 5× stunnel-PSK (TLS 1.2, no forward secrecy)" conn linkgate-sealed-fs stunnel-psk12 5
target "sealed conn/s ≥ spiped -f" conn linkgate-sealed spiped-f 1
target "mux conn/s ≥ 2× spiped -f" conn linkgate-mux spiped-f 2
target "mux conn/s ≥ 0.9× haproxy (one hop, no crypto)" conn linkgate-mux haproxy 0.9
target "mux 1 stream ≥ 0.7× sealed-fs without mux MiB/s" t1 linkgate-mux linkgate-sealed-fs 0.7
if [[ " $CHAINS " == *-floor* ]]; then
    # Not targets: how near the multiplexers alone come to the mux target, and linkgate to them.
    target "(floor) h2-floor conn/s ≥ 0.9× haproxy" conn h2-floor haproxy 0.9
    target "(floor) yamux-floor conn/s ≥ 0.9× haproxy" conn yamux-floor haproxy 0.9
    target "(floor) mux conn/s ≥ 0.9× h2-floor" conn linkgate-mux h2-floor 0.9
fi
for lg in linkgate-sealed linkgate-sealed-fs linkgate-mux; do
    v=$(medraw idle "$lg")
    mx=$(agg max "$(vals idle "$lg")")
    echo "| ${lg#linkgate-} idle ≤ 8 KiB per connection over both processes | $(fmt 2 "$v") KiB | 8 KiB | – | – | $(awk -v v="$v" 'BEGIN { if (v == "") print "not measured"; else if (v <= 8) print "yes"; else print "**no**" }') |"
done
echo

echo "## Noise: every round"
echo
echo "| chain | conn/s | unloaded p99 µs | MiB/s 1 stream | MiB/s 8 streams | CPU µs/conn | CPU s/GiB 1 stream |"
echo "|---|---|---|---|---|---|---|"
for chain in $CHAINS lib; do
    [ "$chain" = lib ] || [ "${STATUS[$chain]:-}" = ok ] || continue
    [ "$chain" = lib ] && [ -z "$(vals conn lib)" ] && continue
    echo "| $chain | $(list conn "$chain") | $(list u99 "$chain") | $(list t1 "$chain") | $(list t8 "$chain") | $(list cpu_conn "$chain") | $(list cpu_gib1 "$chain") |"
done
echo
problems=0
for chain in $CHAINS; do
    if [ -n "${FIRST_ERROR[$chain]:-}" ]; then
        [ $problems = 0 ] && echo "## Problems" && echo
        problems=1
        echo "- $chain: ${FIRST_ERROR[$chain]}"
    fi
done
if [ -s "$WORK/logs/loadgen.log" ]; then
    [ $problems = 0 ] && echo "## Problems" && echo
    problems=1
    echo "- load generator messages (first 10 distinct): $(sort "$WORK/logs/loadgen.log" | uniq -c | sort -rn | head -10 | sed 's/^ *//' | tr '\n' ';' | sed 's/;$//')"
fi
exit 0
