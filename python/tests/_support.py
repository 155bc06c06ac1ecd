"""Shared helpers of the Python tests (stdlib unittest):

    python -m unittest discover -s python/tests -v

They test the ``linkgate`` package that Python imports: the installed one (``pip install
"./python[sealed]"``), or the source folder when ``python/src`` is on PYTHONPATH. The sealed
modes' tests are skipped, with the reason, when ``cryptography`` is not installed.
"""

import json
import os
import socket
import struct
import threading
import unittest
from pathlib import Path

import linkgate

KEY = bytes(range(32))

SEALED_SKIP = ("cryptography not installed: the sealed modes need it "
               "(pip install \"linkgate[sealed]\")")

#: Decorates tests (or test classes) of the sealed modes.
requires_sealed = unittest.skipUnless(linkgate.sealed_modes_available(), SEALED_SKIP)


def modes():
    """The modes to test here: all of them, or plain only without ``cryptography``."""
    return linkgate.MODES if linkgate.sealed_modes_available() else (linkgate.PLAIN,)


def vectors_path():
    """tests/vectors/linkgate1.json: from LINKGATE_VECTORS (set by the Rust test that runs this
    suite), else found by walking up from this file (a checkout of the repository)."""
    from_env = os.environ.get("LINKGATE_VECTORS")
    if from_env:
        return Path(from_env)
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "tests" / "vectors" / "linkgate1.json"
        if candidate.is_file():
            return candidate
    return None


def load_vectors():
    path = vectors_path()
    if path is None:
        raise unittest.SkipTest("tests/vectors/linkgate1.json not found: set LINKGATE_VECTORS")
    with open(path) as file:
        return json.load(file)


def run_in_thread(fn, *args, **kwargs):
    """Runs fn in a thread; returns join(), which gives (result, exception)."""
    box = {}

    def target():
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as err:  # handed back to the test
            box["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()

    def join(timeout=10):
        thread.join(timeout)
        assert not thread.is_alive(), "thread did not finish"
        return box.get("result"), box.get("error")

    return join


def tcp_pair():
    """A connected pair of TCP sockets on 127.0.0.1: (client, server)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return client, server


def recv_all(stream, limit=None):
    """Everything until b"" (the peer's clean end)."""
    data = bytearray()
    while True:
        chunk = stream.recv(65536)
        if not chunk:
            return bytes(data)
        data += chunk
        if limit is not None and len(data) >= limit:
            return bytes(data)


def payload(length, seed=1):
    """Deterministic pseudo-random bytes."""
    import random
    rng = random.Random(seed)
    return bytes(rng.getrandbits(8) for _ in range(length))


class Relay:
    """A TCP relay between a client and a server address that can change bytes on their way:
    ``tamper(direction, offset, data) -> data`` is called with every chunk ("c2s" or "s2c") and
    the offset of its first byte in that direction."""

    def __init__(self, target, tamper=None):
        self.target = target
        self.tamper = tamper or (lambda direction, offset, data: data)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _pump(self, direction, source, sink):
        offset = 0
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    sink.shutdown(socket.SHUT_WR)
                    return
                out = self.tamper(direction, offset, data)
                offset += len(data)
                sink.sendall(out)
        except OSError:
            # Pass a reset on.
            try:
                sink.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sink.close()
            except OSError:
                pass

    def _run(self):
        client, _ = self.listener.accept()
        server = socket.create_connection(self.target)
        back = threading.Thread(target=self._pump, args=("s2c", server, client), daemon=True)
        back.start()
        self._pump("c2s", client, server)
        back.join(10)
        for sock in (client, server):
            sock.close()

    def close(self):
        self.listener.close()
