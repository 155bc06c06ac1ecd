"""SealedSocket over real TCP: data both ways, half-close via close_notify, truncation,
tampering, bytes after close_notify, key updates, timeouts, makefile."""

import select
import socket
import struct
import time
import unittest

import linkgate
from _support import KEY, Relay, payload, recv_all, requires_sealed, run_in_thread, tcp_pair


@requires_sealed
class SealedSocketTests(unittest.TestCase):
    mode = "sealed-fs"

    def connect_pair(self, client_sock=None, server_sock=None):
        """(client stream, server stream) over a fresh TCP pair."""
        if client_sock is None:
            client_sock, server_sock = tcp_pair()
        join = run_in_thread(linkgate.admit, server_sock, {"alice": KEY})
        client = linkgate.authenticate(client_sock, "alice", KEY, mode=self.mode)
        admission, error = join()
        self.assertIsNone(error)
        self.addCleanup(client.close)
        self.addCleanup(admission.stream.close)
        return client, admission.stream

    def test_a_megabyte_each_way_at_once_then_half_close_both_ways(self):
        client, server = self.connect_pair()
        up, down = payload(1 << 20, 1), payload((1 << 20) + 7, 2)

        def server_side():
            sender = run_in_thread(lambda: (server.sendall(down), server.shutdown(socket.SHUT_WR)))
            got = recv_all(server)
            self.assertIsNone(sender()[1])
            return got

        join = run_in_thread(server_side)
        sender = run_in_thread(lambda: (client.sendall(up), client.shutdown(socket.SHUT_WR)))
        received = recv_all(client)
        self.assertIsNone(sender()[1])
        got, error = join()
        self.assertIsNone(error)
        self.assertEqual(got, up)
        self.assertEqual(received, down)
        self.assertEqual(client.recv(10), b"", "still the end")

    def test_half_close_leaves_the_other_direction_flowing(self):
        client, server = self.connect_pair()
        client.sendall(b"request")
        client.shutdown(socket.SHUT_WR)
        self.assertEqual(recv_all(server), b"request")
        server.sendall(b"response after the client's end")
        server.close()  # close_notify: a clean end
        self.assertEqual(recv_all(client), b"response after the client's end")
        with self.assertRaises(linkgate.NetworkError) as caught:
            client.sendall(b"more")
        self.assertIn("close_notify was sent", str(caught.exception))
        self.assertIsInstance(caught.exception, OSError)

    def test_records_hold_at_most_16384_bytes(self):
        client, server = self.connect_pair()
        client.sendall(b"x" * 40000)
        raw = b""
        server.socket.settimeout(5)
        while len(raw) < 40000 + 3 * 22:
            raw += server.socket.recv(65536)
        lengths, pos = [], 0
        while pos < len(raw):
            self.assertEqual(raw[pos:pos + 3], b"\x17\x03\x03")
            length = struct.unpack(">H", raw[pos + 3:pos + 5])[0]
            lengths.append(length - 17)
            pos += 5 + length
        self.assertEqual(lengths, [16384, 16384, 40000 - 32768])

    def test_a_connection_cut_without_close_notify_is_truncated(self):
        client, server = self.connect_pair()
        server.sendall(b"partial")
        server.socket.shutdown(socket.SHUT_WR)  # TCP end, no close_notify
        self.assertEqual(client.recv(100), b"partial")
        with self.assertRaises(linkgate.Truncated) as caught:
            client.recv(100)
        self.assertEqual(caught.exception.reason, "record_truncated")
        # The failure sticks, and the connection was reset: the peer sees an error.
        with self.assertRaises(linkgate.Truncated):
            client.recv(100)
        with self.assertRaises(linkgate.Truncated):
            client.sendall(b"x")
        server.socket.settimeout(5)
        with self.assertRaises(ConnectionResetError):
            server.socket.recv(100)

    def test_bytes_after_close_notify_are_an_error(self):
        client, server = self.connect_pair()
        server.socket.sendall(server._layer.close_notify() + b"\x17\x03\x03")
        with self.assertRaises(linkgate.RecordError) as caught:
            client.recv(100)
        self.assertEqual(caught.exception.reason, "record_data_after_close")

    def test_after_close_notify_recv_returns_nothing_again_and_again(self):
        client, server = self.connect_pair()
        server.shutdown(socket.SHUT_WR)
        self.assertEqual(client.recv(100), b"")
        self.assertEqual(client.recv(100), b"")

    def test_a_tampered_record_is_refused_and_nothing_of_it_is_delivered(self):
        # A relay that flips a bit in the client's third record.
        handshake_len = 2 + 5 + 32 + 32 + (32 if self.mode == "sealed-fs" else 0)  # RESPONSE
        state = {"records": 0, "pending": b"", "passed": 0}

        def tamper(direction, offset, data):
            if direction != "c2s":
                return data
            out = b""
            if state["passed"] < handshake_len:
                take = min(handshake_len - state["passed"], len(data))
                out, data = data[:take], data[take:]
                state["passed"] += take
            buf = state["pending"] + data
            while len(buf) >= 5:
                length = 5 + struct.unpack(">H", buf[3:5])[0]
                if len(buf) < length:
                    break
                record, buf = bytearray(buf[:length]), buf[length:]
                if state["records"] == 2:
                    record[length // 2] ^= 0x04
                state["records"] += 1
                out += bytes(record)
            state["pending"] = buf
            return out

        gate = tcp_server_admitting(self)
        relay = Relay(gate.address, tamper)
        self.addCleanup(relay.close)
        client = linkgate.connect(relay.address, "alice", KEY, mode=self.mode)
        self.addCleanup(client.close)
        for i in range(5):
            try:
                client.sendall(bytes([0x30 + i]) * 1000)
            except linkgate.LinkgateError:
                break
            time.sleep(0.05)
        received, error = gate.result()
        self.assertIsInstance(error, linkgate.RecordError)
        self.assertEqual(error.reason, "record_bad_tag")
        self.assertEqual(received, b"0" * 1000 + b"1" * 1000, "only the intact records")
        # The client learns of it from the reset.
        client.settimeout(5)
        with self.assertRaises(linkgate.LinkgateError) as caught:
            client.recv(100)
        self.assertIsInstance(caught.exception, (linkgate.PeerReset, linkgate.Truncated))

    def test_key_updates_over_the_wire(self):
        from linkgate import record
        saved = record.KEY_UPDATE_INTERVAL
        record.KEY_UPDATE_INTERVAL = 3
        try:
            client, server = self.connect_pair()
        finally:
            record.KEY_UPDATE_INTERVAL = saved
        data = payload(200_000, 5)
        for start in range(0, len(data), 1000):
            client.sendall(data[start:start + 1000])
            self.assertLess(client._layer.sealer.seq, 3)
        client.shutdown(socket.SHUT_WR)
        self.assertEqual(recv_all(server), data)

    def test_a_recv_timeout_is_retryable(self):
        client, server = self.connect_pair()
        client.settimeout(0.1)
        with self.assertRaises(linkgate.Timeout) as caught:
            client.recv(10)
        self.assertIsInstance(caught.exception, socket.timeout)
        self.assertIsInstance(caught.exception, TimeoutError)
        server.sendall(b"later")
        client.settimeout(5)
        self.assertEqual(client.recv(10), b"later")

    def test_non_blocking_recv_waits_for_a_whole_record_and_sending_is_refused(self):
        client, server = self.connect_pair()
        record = server._layer.seal(b"in two pieces")
        client.setblocking(False)
        with self.assertRaises(BlockingIOError):
            client.recv(100)  # nothing sent yet
        server.socket.sendall(record[:9])
        self.assertEqual(select.select([client], [], [], 5)[0], [client])
        with self.assertRaises(BlockingIOError):
            client.recv(100)  # half a record: kept, not a failure
        self.assertEqual(client.pending(), 0)
        # Sending could stop part-way through a record: refused before anything is sent.
        with self.assertRaises(linkgate.NetworkError) as caught:
            client.sendall(b"x")
        self.assertIn("non-blocking mode", str(caught.exception))
        server.socket.sendall(record[9:])
        self.assertEqual(select.select([client], [], [], 5)[0], [client])
        self.assertEqual(client.recv(100), b"in two pieces")
        # The stream is whole both ways.
        client.setblocking(True)
        client.sendall(b"back")
        server.settimeout(5)
        self.assertEqual(server.recv(100), b"back")
        # A half-close in non-blocking mode sends close_notify whole.
        client.setblocking(False)
        client.shutdown(socket.SHUT_WR)
        self.assertEqual(client.gettimeout(), 0.0, "non-blocking again")
        self.assertEqual(server.recv(100), b"")

    def test_a_block_that_raises_aborts_and_the_peer_sees_an_error(self):
        client, server = self.connect_pair()
        with self.assertRaises(RuntimeError):
            with client:
                client.sendall(b"half a message")
                raise RuntimeError("boom")
        server.settimeout(5)
        self.assertEqual(server.recv(100), b"half a message")
        with self.assertRaises(linkgate.LinkgateError) as caught:
            server.recv(100)
        self.assertIsInstance(caught.exception, (linkgate.PeerReset, linkgate.Truncated))

    def test_makefile_and_recv_into(self):
        client, server = self.connect_pair()
        writer = client.makefile("wb")
        writer.write(b"line one\nline two\n")
        writer.flush()
        reader = server.makefile("r", encoding="ascii")
        self.assertEqual(reader.readline(), "line one\n")
        self.assertEqual(reader.readline(), "line two\n")
        client.sendall(b"0123456789")
        buffer = bytearray(4)
        self.assertEqual(server.recv_into(buffer), 4)
        self.assertEqual(bytes(buffer), b"0123")
        self.assertEqual(server.pending(), 6)
        self.assertIn(f"mode={self.mode}", repr(server))


class SealedModeTests(SealedSocketTests):
    mode = "sealed"


class _GateResult:
    def __init__(self, address, join):
        self.address = address
        self._join = join

    def result(self):
        (received, error), outer = self._join()
        assert outer is None, outer
        return received, error


def tcp_server_admitting(test):
    """A one-connection server that admits, then records what it receives until it fails."""
    listener = socket.create_server(("127.0.0.1", 0))
    test.addCleanup(listener.close)

    def run():
        conn, _ = listener.accept()
        stream, _ = linkgate.admit(conn, {"alice": KEY})
        received = b""
        try:
            while True:
                chunk = stream.recv(65536)
                if not chunk:
                    return received, None
                received += chunk
        except linkgate.LinkgateError as err:
            return received, err
        finally:
            stream.close()

    return _GateResult(listener.getsockname(), run_in_thread(run))


if __name__ == "__main__":
    unittest.main()
