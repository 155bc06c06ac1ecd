#!/usr/bin/env python3
"""Sanity check of the simulated WAN made by wan.sh (run `wan.sh up` first, as root).

    bench/wan/check.py [--bulk-mb 50] [--concurrent 200]

Starts a server in lgw-server and the measurements in lgw-client (via `ip netns exec`) and
prints connect time, request/response time, bulk throughput, a UDP order/loss test and the
result of many concurrent short TCP connections.
"""
import argparse
import os
import socket
import socketserver
import statistics
import struct
import subprocess
import sys
import threading
import time

SERVER = "10.99.0.2"
PORT = 5299


def retrans():
    """TCP segments this namespace has retransmitted (loss or reordering shows up here)."""
    lines = [l.split() for l in open("/proc/net/snmp") if l.startswith("Tcp:")]
    return int(lines[1][lines[0].index("RetransSegs")])


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        s = self.request
        mode = s.recv(1)
        if mode == b"e":  # echo until EOF
            while data := s.recv(65536):
                s.sendall(data)
        elif mode == b"s":  # sink: count bytes until EOF, answer the count
            n = 0
            while data := s.recv(1 << 20):
                n += len(data)
            s.sendall(struct.pack("!Q", n))
        elif mode == b"u":  # report the UDP test: received, out of order
            s.sendall(struct.pack("!QQ", *self.server.udp))


def serve():
    socketserver.ThreadingTCPServer.request_queue_size = 512  # default backlog 5 drops SYNs
    socketserver.ThreadingTCPServer.allow_reuse_address = True  # rerun despite TIME_WAIT
    srv = socketserver.ThreadingTCPServer((SERVER, PORT), Handler)
    srv.daemon_threads = True
    srv.udp = [0, 0]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    u.bind((SERVER, PORT))

    def udp_rx():
        last = -1
        while True:
            seq = struct.unpack("!Q", u.recv(2048)[:8])[0]
            srv.udp[0] += 1
            srv.udp[1] += seq < last
            last = seq
    threading.Thread(target=udp_rx, daemon=True).start()
    print("ready", flush=True)
    srv.serve_forever()


def conn(mode):
    s = socket.create_connection((SERVER, PORT))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(mode)
    return s


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("short read")
        buf += chunk
    return buf


def client(bulk_mb, concurrent):
    ms = lambda xs: f"median {statistics.median(xs)*1e3:.1f} ms, min {min(xs)*1e3:.1f}, max {max(xs)*1e3:.1f}"
    last = [retrans()]

    def report(msg):  # each line also says how many TCP segments the client side resent
        now = retrans()
        print(f"{msg}  [client TCP retransmits: {now - last[0]}]", flush=True)
        last[0] = now

    times = []
    for _ in range(10):
        t = time.perf_counter()
        s = socket.create_connection((SERVER, PORT))
        times.append(time.perf_counter() - t)
        s.close()
    report(f"TCP connect (10):           {ms(times)}")

    s, times = conn(b"e"), []
    for i in range(20):
        t = time.perf_counter()
        s.sendall(b"x" * 100)
        recv_exact(s, 100)
        times.append(time.perf_counter() - t)
    s.close()
    report(f"request/response (20, 100 B on an open connection): {ms(times)}")

    s, block = conn(b"s"), os.urandom(1 << 16)
    total = bulk_mb << 20
    t = time.perf_counter()
    for _ in range(total // len(block)):
        s.sendall(block)
    s.shutdown(socket.SHUT_WR)
    n = struct.unpack("!Q", recv_exact(s, 8))[0]
    dt = time.perf_counter() - t
    s.close()
    report(f"bulk {bulk_mb} MB client->server: {n == total and 'complete' or f'ONLY {n} B'}, "
          f"{dt:.2f} s, {total / dt / 1e6:.1f} MB/s")

    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent, t = 5000, time.perf_counter()
    for seq in range(sent):  # ~5k packets/s for 1 s: moderate load
        u.sendto(struct.pack("!Q", seq) + b"u" * 200, (SERVER, PORT))
        time.sleep(0.0002)
    rate = sent / (time.perf_counter() - t)
    time.sleep(0.2)
    s = conn(b"u")
    got, reordered = struct.unpack("!QQ", recv_exact(s, 16))
    s.close()
    report(f"UDP {sent} datagrams at {rate:.0f}/s: received {got}, out of order {reordered}")

    ok, errors, lock = [], [], threading.Lock()

    def one(i):
        try:
            msg = f"hello {i}".encode() * 10
            t = time.perf_counter()
            c = conn(b"e")
            c.sendall(msg)
            good = recv_exact(c, len(msg)) == msg
            c.close()
            with lock:
                (ok if good else errors).append(time.perf_counter() - t)
        except OSError as e:
            with lock:
                errors.append(e)
    t = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(concurrent)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    report(f"{concurrent} concurrent connect+echo: {len(ok)} ok, {len(errors)} failed, "
          f"wall {time.perf_counter() - t:.2f} s, per connection {ms(ok) if ok else '-'}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("role", nargs="?", default="run", choices=["run", "serve", "client"])
    ap.add_argument("--bulk-mb", type=int, default=50)
    ap.add_argument("--concurrent", type=int, default=200)
    a = ap.parse_args()
    if a.role == "serve":
        return serve()
    if a.role == "client":
        return client(a.bulk_mb, a.concurrent)
    me = os.path.abspath(__file__)
    srv = subprocess.Popen(["ip", "netns", "exec", "lgw-server", sys.executable, me, "serve"],
                           stdout=subprocess.PIPE, text=True)
    try:
        if srv.stdout.readline().strip() != "ready":
            sys.exit("check: server did not start")
        subprocess.run(["ip", "netns", "exec", "lgw-client", sys.executable, me, "client",
                        "--bulk-mb", str(a.bulk_mb), "--concurrent", str(a.concurrent)], check=True)
    finally:
        srv.terminate()  # ends `ip netns exec`, which exec'd python: the server itself
        srv.wait()


if __name__ == "__main__":
    main()
