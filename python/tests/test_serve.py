"""linkgate.serve, the threaded server: every mode, clean ends, handler failures, bounds, and the
bad peers that crashed the old inline loop (connect then reset; a valid RESPONSE then reset;
random bytes; silence): the server keeps serving, and a legitimate client is admitted promptly
while a silent one is connected."""

import os
import socket
import struct
import threading
import time
import unittest

import linkgate

from _support import KEY, modes, payload, recv_all, requires_sealed


def echo(stream, key_id):
    while True:
        data = stream.recv(65536)
        if not data:
            return
        stream.sendall(data)


def reset(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class Serve(unittest.TestCase):
    def start(self, handler=echo, **options):
        options.setdefault("allow_plain", True)
        server = linkgate.serve(handler, "127.0.0.1", 0, {"alice": KEY}, **options)
        self.addCleanup(server.close)
        self.address = ("127.0.0.1", server.port)
        return server

    def legit(self, mode=None, data=b"hello"):
        """A legitimate client: admitted, echoed, a clean end. Returns how long it took."""
        mode = mode or modes()[-1]
        started = time.monotonic()
        with linkgate.connect(self.address, "alice", KEY, mode=mode, timeout=5) as stream:
            stream.sendall(data)
            stream.shutdown(socket.SHUT_WR)
            self.assertEqual(recv_all(stream), data)
        return time.monotonic() - started

    def test_every_mode_with_data_both_ways_and_a_clean_end(self):
        seen = []

        def handler(stream, key_id):
            seen.append((key_id, getattr(stream, "mode", "plain")))
            echo(stream, key_id)

        self.start(handler)
        for mode in modes():
            with self.subTest(mode=mode):
                self.legit(mode, payload(300_000, 3))
        self.assertEqual(seen, [("alice", mode) for mode in modes()])

    def test_port_0_and_the_address(self):
        server = self.start()
        self.assertNotEqual(server.port, 0)
        self.assertEqual(server.address[0], "127.0.0.1")
        self.assertIn(str(server.port), repr(server))

    def test_bad_peers_do_not_stop_or_delay_the_server(self):
        self.start(timeout=5)
        with self.assertLogs("linkgate", "INFO") as logs:
            # Silence: connected, reads the challenge, says nothing (held until the end).
            silent = socket.create_connection(self.address)
            self.addCleanup(silent.close)
            self.assertEqual(silent.recv(40)[:8], linkgate.MAGIC)
            for _ in range(10):
                # Connect, then reset at once.
                reset(socket.create_connection(self.address))
                # A valid RESPONSE, then reset before the verdict.
                sock = socket.create_connection(self.address)
                nonce = sock.recv(40)[8:]
                sock.sendall(linkgate.encode_response(KEY, "alice", nonce, os.urandom(32)))
                reset(sock)
                # Random bytes.
                sock = socket.create_connection(self.address)
                sock.sendall(os.urandom(200))
                sock.close()
            # The legitimate client gets in at once, although the silent one holds on.
            for mode in modes():
                self.assertLess(self.legit(mode), 2.0, "admitted promptly")
        text = "\n".join(logs.output)
        self.assertIn("reason=malformed", text)
        self.assertIn("admitted", text)

    def test_a_silent_client_is_closed_at_the_timeout(self):
        self.start(timeout=0.3)
        with self.assertLogs("linkgate", "INFO") as logs:
            silent = socket.create_connection(self.address)
            self.addCleanup(silent.close)
            silent.settimeout(5)
            self.assertEqual(len(silent.recv(40)), 40)
            self.assertEqual(silent.recv(10), b"", "closed by the server")
            deadline = time.monotonic() + 5
            while not any("reason=timeout" in line for line in logs.output):
                self.assertLess(time.monotonic(), deadline)
                time.sleep(0.01)
        self.assertIn("handshake timed out after 300ms", "\n".join(logs.output))

    def test_handshakes_are_bounded_per_source(self):
        server = self.start(max_handshakes_per_source=2, timeout=1)
        silent = [socket.create_connection(self.address) for _ in range(2)]
        for sock in silent:
            self.addCleanup(sock.close)
            sock.recv(40)
        self.assertEqual(server.handshakes_in_progress, 2)
        with self.assertLogs("linkgate", "WARNING") as logs:
            third = socket.create_connection(self.address)
            self.addCleanup(third.close)
            third.settimeout(5)
            try:
                self.assertEqual(third.recv(40), b"", "closed at once, no challenge")
            except ConnectionResetError:
                pass
        self.assertIn("max_handshakes_per_source=2", logs.output[0])
        # Once the silent ones time out, others get in again.
        deadline = time.monotonic() + 5
        while server.handshakes_in_progress:
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.02)
        self.legit()

    def test_a_handler_that_raises_resets_its_connection_only(self):
        def handler(stream, key_id):
            stream.sendall(b"partial")
            raise RuntimeError("the handler broke")

        self.start(handler)
        with self.assertLogs("linkgate", "INFO") as logs:
            stream = linkgate.connect(self.address, "alice", KEY, mode=modes()[-1])
            self.addCleanup(stream.close)
            stream.settimeout(5)
            # A reset, never a clean end ("partial" itself may be lost to the reset).
            with self.assertRaises((linkgate.LinkgateError, ConnectionResetError)):
                while stream.recv(100):
                    pass
        self.assertTrue(any("the handler failed" in line and "RuntimeError" in line
                            for line in logs.output), logs.output)

    @requires_sealed
    def test_refusals_are_logged_with_their_reason(self):
        self.start(allow_plain=False)
        with self.assertLogs("linkgate", "INFO") as logs:
            with self.assertRaises(linkgate.Denied):
                linkgate.connect(self.address, "alice", os.urandom(32), mode=modes()[-1])
            with self.assertRaises(linkgate.RefusedAsMalformed):
                linkgate.connect(self.address, "alice", KEY, mode="plain")
            deadline = time.monotonic() + 5
            while len([line for line in logs.output if "rejected" in line]) < 2:
                self.assertLess(time.monotonic(), deadline)
                time.sleep(0.01)
        text = "\n".join(logs.output)
        self.assertIn("reason=wrong_proof: denied: wrong proof for key id alice", text)
        self.assertIn("reason=mode_not_allowed: mode plain refused by policy", text)

    def test_close_stops_accepting(self):
        server = self.start()
        self.legit()
        server.close()
        with self.assertRaises(linkgate.ConnectionRefused) as caught:
            linkgate.connect(self.address, "alice", KEY, mode=modes()[-1])
        self.assertIsInstance(caught.exception, ConnectionRefusedError)
        server.close()  # twice is fine

    def test_serve_forever_returns_once_closed(self):
        server = self.start()
        threading.Timer(0.2, server.close).start()
        started = time.monotonic()
        server.serve_forever()
        self.assertLess(time.monotonic() - started, 5)

    def test_max_connections(self):
        release = threading.Event()

        def handler(stream, key_id):
            stream.sendall(b"in")
            release.wait(10)

        self.start(handler, max_connections=1)
        first = linkgate.connect(self.address, "alice", KEY, mode=modes()[-1])
        self.addCleanup(first.close)
        self.assertEqual(first.recv(2), b"in")
        # At the bound the second connection waits in the backlog: no challenge yet.
        with self.assertRaises(linkgate.HandshakeTimeout):
            linkgate.connect(self.address, "alice", KEY, mode=modes()[-1], timeout=0.5)
        release.set()
        second = linkgate.connect(self.address, "alice", KEY, mode=modes()[-1])
        self.addCleanup(second.close)
        self.assertEqual(second.recv(2), b"in")

    def test_every_failure_of_a_client_is_a_linkgate_error(self):
        self.start()
        with self.assertRaises(linkgate.HandshakeTimeout) as caught:
            # A listener that never answers: the client times out with the setting.
            listener = socket.create_server(("127.0.0.1", 0))
            self.addCleanup(listener.close)
            linkgate.connect(listener.getsockname(), "alice", KEY, timeout=0.2,
                             mode=modes()[-1])
        self.assertIn("timed out after 200ms", str(caught.exception))
        with self.assertRaises(linkgate.ConnectionRefused):
            linkgate.connect(("127.0.0.1", 1), "alice", KEY, mode=modes()[-1])


if __name__ == "__main__":
    unittest.main()
