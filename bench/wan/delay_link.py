#!/usr/bin/env python3
"""Userspace WAN delay link between two TUN devices (this kernel has no netem).

Every packet read from one TUN device is written, unchanged, to the other one
DELAY ms later; order is preserved per direction. Attach to existing
(persistent) devices, e.g. made with `ip tuntap add dev X mode tun`, which may
then be moved into other network namespaces: the open fd keeps working.

    delay_link.py DEV_A DEV_B [--delay-ms 20] [--max-queue 100000]

Stdlib only. Exits 0 on SIGTERM/SIGINT.
"""
import argparse
import fcntl
import heapq
import itertools
import os
import selectors
import signal
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000  # raw IP packets, no 4-byte packet-info header
READ_SIZE = 65536  # more than any MTU, so a read never truncates a packet
BURST = 64  # max packets read per wakeup, so a flood one way cannot delay the other way's sends


def open_tun(name):
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dev_a")
    ap.add_argument("dev_b")
    ap.add_argument("--delay-ms", type=float, default=20.0, help="one-way delay (default 20)")
    ap.add_argument("--max-queue", type=int, default=100000,
                    help="packets in flight before new ones are dropped (bounds memory)")
    ap.add_argument("--ready-file", help="create this file once both devices are attached")
    args = ap.parse_args()
    if args.delay_ms < 0 or args.max_queue < 1:
        ap.error("--delay-ms must be >= 0 and --max-queue >= 1")
    for name in (args.dev_a, args.dev_b):
        if not 0 < len(name.encode()) < 16:  # IFNAMSIZ; struct.pack would silently truncate
            ap.error(f"bad interface name {name!r}")

    # Raise out of the loop so cleanup runs; PEP 475 would otherwise just restart select().
    def stop(signum, _frame):
        raise SystemExit(0)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    try:
        a, b = open_tun(args.dev_a), open_tun(args.dev_b)
    except OSError as e:
        sys.exit(f"delay_link: cannot attach to {args.dev_a}/{args.dev_b}: {e}")
    if args.ready_file:
        open(args.ready_file, "w").close()

    delay = args.delay_ms / 1000.0
    peer = {a: b, b: a}
    # select(2) takes a microsecond timeout; epoll/poll round up to whole milliseconds, which
    # would add up to 1 ms to every hop. With two fds select() costs nothing extra.
    sel = selectors.SelectSelector()
    sel.register(a, selectors.EVENT_READ)
    sel.register(b, selectors.EVENT_READ)
    # Timer heap of (due, seq, out_fd, packet). seq breaks ties so equal deadlines keep
    # arrival order and packets themselves are never compared.
    heap, seq = [], itertools.count()
    forwarded, dropped = {a: 0, b: 0}, 0  # forwarded is keyed by the output fd
    try:
        while True:
            timeout = max(0.0, heap[0][0] - time.monotonic()) if heap else None
            for key, _ in sel.select(timeout):
                fd = key.fd
                due = time.monotonic() + delay
                # Read a burst: one select() per burst, not per packet.
                for _ in range(BURST):
                    try:
                        pkt = os.read(fd, READ_SIZE)
                    except BlockingIOError:
                        break
                    if not pkt:
                        break
                    if len(heap) >= args.max_queue:
                        dropped += 1  # behave like a full router queue rather than grow without bound
                        continue
                    heapq.heappush(heap, (due, next(seq), peer[fd], pkt))
            now = time.monotonic()
            while heap and heap[0][0] <= now:
                _, _, out, pkt = heapq.heappop(heap)
                try:
                    os.write(out, pkt)
                    forwarded[out] += 1
                except OSError:
                    # The kernel rejects malformed packets (EINVAL) or a down/full device; drop it,
                    # as a real link would, instead of dying.
                    dropped += 1
    except SystemExit:
        pass
    finally:
        os.close(a)
        os.close(b)
        print(f"delay_link: forwarded {forwarded[b]} {args.dev_a}->{args.dev_b}, "
              f"{forwarded[a]} {args.dev_b}->{args.dev_a}, dropped {dropped}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
