#!/usr/bin/env bash
# Simulated WAN for latency benchmarks: two network namespaces joined by a userspace delay link
# (this kernel has no netem qdisc). Needs root, iproute2 and python3.
#
#   bench/wan/wan.sh up [DELAY_MS]   # (re)create the link; DELAY_MS one way (default 20 → RTT ≈ 40 ms)
#   bench/wan/wan.sh down            # remove everything `up` made; safe on partial state
#   ip netns exec lgw-server <server listening on 10.99.0.2>
#   ip netns exec lgw-client <client connecting to 10.99.0.2>
#
#   lgw-client: lgwc 10.99.0.1 ⇄ delay_link.py (root ns) ⇄ lgws 10.99.0.2 :lgw-server
#
# How: persistent TUN devices are created in the root namespace, delay_link.py attaches to both,
# then they are moved into the namespaces (an attached TUN fd keeps working after the move).
# Environment: MTU (1500) for both TUN devices; WAN_RUN_DIR (/run, else /tmp) for pid and log.
set -Eeuo pipefail  # -E: the ERR trap in up() also fires inside configure()

CLIENT_NS=lgw-client SERVER_NS=lgw-server
CLIENT_DEV=lgwc SERVER_DEV=lgws
CLIENT_IP=10.99.0.1 SERVER_IP=10.99.0.2
MTU=${MTU:-1500}
RUN_DIR=${WAN_RUN_DIR:-$( [ -w /run ] && echo /run || echo /tmp )}
PIDFILE=$RUN_DIR/lgw-wan.pid
LOG=$RUN_DIR/lgw-wan.log
READY=$RUN_DIR/lgw-wan.ready
HERE=$(cd "$(dirname "$0")" && pwd)

down() {
    if [ -f "$PIDFILE" ]; then
        pid=$(cat "$PIDFILE")
        # Only kill the PID we recorded, and only if it is still our delay link (PIDs get reused).
        if [[ $pid =~ ^[0-9]+$ ]] && tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q delay_link.py; then
            kill "$pid"
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
        fi
        rm -f "$PIDFILE"
    fi
    # Deleting a namespace also deletes the TUN device moved into it.
    for ns in "$CLIENT_NS" "$SERVER_NS"; do
        ip netns del "$ns" 2>/dev/null || true
    done
    # Devices left in the root namespace by an `up` that failed before moving them.
    for dev in "$CLIENT_DEV" "$SERVER_DEV"; do
        ip link del "$dev" 2>/dev/null || true
    done
    rm -f "$READY"
}

# configure NS DEV LOCAL_IP PEER_IP: point-to-point address, so the route to the peer comes with it.
configure() {
    ip link set "$2" netns "$1"
    ip -n "$1" link set lo up
    ip -n "$1" link set "$2" mtu "$MTU" addrgenmode none  # no IPv6 link-local: no stray RS/MLD on the link
    ip -n "$1" addr add "$3" peer "$4" dev "$2"
    ip -n "$1" link set "$2" up
}

up() {
    local delay=${1:-20}
    [[ $delay =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "wan.sh: DELAY_MS must be a number, got '$delay'" >&2; exit 2; }
    down
    trap 'echo "wan.sh: up failed, cleaning up" >&2; down' ERR
    ip tuntap add dev "$CLIENT_DEV" mode tun
    ip tuntap add dev "$SERVER_DEV" mode tun
    python3 "$HERE/delay_link.py" "$CLIENT_DEV" "$SERVER_DEV" --delay-ms "$delay" \
        --ready-file "$READY" </dev/null >"$LOG" 2>&1 &
    echo $! >"$PIDFILE"
    # The devices must be attached before they leave the root namespace (it opens them by name).
    for _ in $(seq 50); do [ -f "$READY" ] && break; sleep 0.1; done
    [ -f "$READY" ] || { echo "wan.sh: delay_link.py did not start, see $LOG" >&2; down; exit 1; }
    ip netns add "$CLIENT_NS"
    ip netns add "$SERVER_NS"
    configure "$CLIENT_NS" "$CLIENT_DEV" "$CLIENT_IP" "$SERVER_IP"
    configure "$SERVER_NS" "$SERVER_DEV" "$SERVER_IP" "$CLIENT_IP"
    echo "wan up: $CLIENT_NS ($CLIENT_IP) <-> $SERVER_NS ($SERVER_IP), ${delay} ms each way, pid $(cat "$PIDFILE")"
}

case ${1:-} in
    up) up "${2:-20}" ;;
    down) down ;;
    *) echo "usage: $0 up [DELAY_MS] | down" >&2; exit 2 ;;
esac
