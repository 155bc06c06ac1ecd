"""linkgate.aio: open_connection and start_server in every mode, the StreamReader/StreamWriter
methods of the sealed pair, half-close, truncation, tampering, timeouts, and the bad peers
against start_server. Also the blocking and asyncio halves against each other."""

import asyncio
import os
import socket
import struct
import time
import unittest

import linkgate
from linkgate import aio

from _support import KEY, modes, payload, recv_all, requires_sealed


async def echo_lines(reader, writer, key_id):
    """Echoes until the client's end, then ends cleanly (close_notify in the sealed modes)."""
    while True:
        data = await reader.read(65536)
        if not data:
            break
        writer.write(data)
        await writer.drain()
    writer.close()
    await writer.wait_closed()


class Aio(unittest.IsolatedAsyncioTestCase):
    async def start(self, handler=echo_lines, **options):
        options.setdefault("allow_plain", True)
        server = await aio.start_server(handler, "127.0.0.1", 0, {"alice": KEY}, **options)
        self.port = server.sockets[0].getsockname()[1]
        self.addAsyncCleanup(self.stop, server)
        return server

    async def stop(self, server):
        server.close()
        await server.wait_closed()

    async def legit(self, mode=None, data=b"hello"):
        mode = mode or modes()[-1]
        started = time.monotonic()
        reader, writer = await aio.open_connection("127.0.0.1", self.port, "alice", KEY,
                                                   mode=mode)
        writer.write(data)
        writer.write_eof()
        await writer.drain()
        self.assertEqual(await reader.read(), data)
        self.assertTrue(reader.at_eof())
        writer.close()
        await writer.wait_closed()
        return time.monotonic() - started

    async def test_every_mode_with_data_both_ways_and_half_close(self):
        seen = []

        async def handler(reader, writer, key_id):
            seen.append((key_id, getattr(writer, "mode", "plain")))
            await echo_lines(reader, writer, key_id)

        await self.start(handler)
        for mode in modes():
            with self.subTest(mode=mode):
                await self.legit(mode, payload(300_000, 4))
        self.assertEqual(seen, [("alice", mode) for mode in modes()])

    async def test_closing_our_writer_ends_a_read_waiting_in_another_task(self):
        # As on a plain asyncio stream: our own close is an end, not the peer's truncation.
        closed = asyncio.Event()

        async def silent(reader, writer, key_id):
            await reader.read()  # until the client's end
            closed.set()
            writer.close()

        await self.start(silent)
        for mode in modes():
            with self.subTest(mode=mode):
                closed.clear()
                reader, writer = await aio.open_connection("127.0.0.1", self.port, "alice",
                                                           KEY, mode=mode)
                waiting = asyncio.ensure_future(reader.read())
                await asyncio.sleep(0.05)
                writer.close()
                await writer.wait_closed()
                self.assertEqual(await asyncio.wait_for(waiting, 5), b"")
                self.assertIsNone(getattr(reader, "exception", lambda: None)())
                await asyncio.wait_for(closed.wait(), 5)  # the server saw a clean end

    async def test_the_sealed_pair_has_the_stream_methods(self):
        for mode in modes():
            if mode == "plain":
                continue
            with self.subTest(mode=mode):
                async def handler(reader, writer, key_id, mode=mode):
                    self.assertIsInstance(reader, aio.SealedStreamReader)
                    self.assertEqual(await reader.readline(), b"line one\n")
                    self.assertEqual(await reader.readexactly(3), b"abc")
                    self.assertEqual(await reader.readuntil(b"!"), b"defg!")
                    rest = [line async for line in reader]
                    self.assertEqual(rest, [b"two\n", b"three"])
                    self.assertTrue(reader.at_eof())
                    with self.assertRaises(asyncio.IncompleteReadError):
                        await reader.readexactly(1)
                    writer.writelines([b"bye", b"!"])
                    self.assertEqual(writer.get_extra_info("peername")[0], "127.0.0.1")
                    self.assertEqual((writer.key_id, writer.mode), ("alice", mode))
                    writer.close()

                server = await self.start(handler)
                reader, writer = await aio.open_connection("127.0.0.1", self.port,
                                                           linkgate.Key("alice", KEY), mode=mode)
                writer.write(b"line one\nabcdefg!two\nthree")
                self.assertTrue(writer.can_write_eof())
                writer.write_eof()
                await writer.drain()
                self.assertEqual(await reader.read(), b"bye!")
                self.assertEqual(await reader.read(), b"")
                with self.assertRaises(linkgate.NetworkError):
                    writer.write(b"after the end")
                writer.close()
                await writer.wait_closed()
                await self.stop(server)

    async def test_blocking_and_asyncio_halves_talk(self):
        await self.start()
        loop = asyncio.get_running_loop()

        def blocking_client(mode):
            with linkgate.connect(("127.0.0.1", self.port), "alice", KEY, mode=mode) as stream:
                stream.sendall(b"from a thread")
                stream.shutdown(socket.SHUT_WR)
                return recv_all(stream)

        for mode in modes():
            self.assertEqual(await loop.run_in_executor(None, blocking_client, mode),
                             b"from a thread")

        def echo(stream, key_id):
            while True:
                data = stream.recv(65536)
                if not data:
                    return
                stream.sendall(data)

        threaded = linkgate.serve(echo, "127.0.0.1", 0, {"alice": KEY}, allow_plain=True)
        self.addCleanup(threaded.close)
        for mode in modes():
            reader, writer = await aio.open_connection("127.0.0.1", threaded.port, "alice", KEY,
                                                       mode=mode)
            writer.write(b"to a thread")
            writer.write_eof()
            self.assertEqual(await reader.read(), b"to a thread")
            writer.close()

    async def test_bad_peers_do_not_stop_or_delay_the_server(self):
        await self.start(timeout=5)
        loop = asyncio.get_running_loop()
        with self.assertLogs("linkgate", "INFO") as logs:
            silent_reader, silent_writer = await asyncio.open_connection("127.0.0.1", self.port)
            self.assertEqual((await silent_reader.readexactly(40))[:8], linkgate.MAGIC)

            def bad_peers():
                address = ("127.0.0.1", self.port)
                for _ in range(10):
                    sock = socket.create_connection(address)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.close()
                    sock = socket.create_connection(address)
                    nonce = sock.recv(40)[8:]
                    sock.sendall(linkgate.encode_response(KEY, "alice", nonce, os.urandom(32)))
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.close()
                    sock = socket.create_connection(address)
                    sock.sendall(os.urandom(200))
                    sock.close()

            await loop.run_in_executor(None, bad_peers)
            for mode in modes():
                self.assertLess(await self.legit(mode), 2.0, "admitted promptly")
            silent_writer.close()
        text = "\n".join(logs.output)
        self.assertIn("reason=malformed", text)
        self.assertIn("admitted", text)

    async def test_handshakes_are_bounded_per_source(self):
        await self.start(max_handshakes_per_source=1, timeout=0.5)
        with self.assertLogs("linkgate", "WARNING") as logs:
            first = await asyncio.open_connection("127.0.0.1", self.port)
            await first[0].readexactly(40)
            second = await asyncio.open_connection("127.0.0.1", self.port)
            try:
                self.assertEqual(await asyncio.wait_for(second[0].read(), 5), b"")
            except ConnectionResetError:
                pass
        self.assertIn("max_handshakes_per_source=1", logs.output[0])
        first[1].close()
        second[1].close()
        await asyncio.sleep(0.6)
        await self.legit()

    async def test_timeouts_show_the_setting(self):
        await self.start(timeout=0.25)
        with self.assertLogs("linkgate", "INFO") as logs:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            await reader.readexactly(40)
            self.assertEqual(await asyncio.wait_for(reader.read(), 5), b"")
            writer.close()
            await asyncio.sleep(0.05)
        self.assertIn("handshake timed out after 250ms waiting for the client's response",
                      "\n".join(logs.output))

        held = []
        silent = await asyncio.start_server(lambda r, w: held.append(w), "127.0.0.1", 0)
        self.addAsyncCleanup(self.stop, silent)
        port = silent.sockets[0].getsockname()[1]
        with self.assertRaises(linkgate.HandshakeTimeout) as caught:
            await aio.open_connection("127.0.0.1", port, "alice", KEY, mode=modes()[-1],
                                      timeout=0.3)
        self.assertTrue(str(caught.exception).startswith("timed out after 300ms: the server "
                                                         "sent nothing"), str(caught.exception))
        for writer in held:
            writer.close()

    @requires_sealed
    async def test_refusals(self):
        await self.start(allow_plain=False)
        with self.assertRaises(linkgate.Denied):
            await aio.open_connection("127.0.0.1", self.port, "alice", os.urandom(32),
                                      mode=modes()[-1])
        with self.assertRaises(linkgate.RefusedAsMalformed):
            await aio.open_connection("127.0.0.1", self.port, "alice", KEY, mode="plain")
        with self.assertRaises(linkgate.ConnectionRefused):
            await aio.open_connection("127.0.0.1", 1, "alice", KEY, mode=modes()[-1])
        with self.assertRaises(linkgate.InvalidArgument):
            await aio.start_server(echo_lines, "127.0.0.1", 0)

    async def test_authenticate_and_admit_on_existing_streams(self):
        async def handler(reader, writer):
            reader, writer, key_id = await aio.admit(reader, writer, {"alice": KEY},
                                                     allow_plain=True)
            writer.write(key_id.encode())
            writer.close()

        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        self.addAsyncCleanup(self.stop, server)
        port = server.sockets[0].getsockname()[1]
        for mode in modes():
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            reader, writer = await aio.authenticate(reader, writer, "alice", KEY, mode=mode)
            self.assertEqual(await reader.read(), b"alice")
            writer.close()

    async def test_a_handler_that_raises_resets_its_connection(self):
        async def handler(reader, writer, key_id):
            raise RuntimeError("the handler broke")

        await self.start(handler)
        with self.assertLogs("linkgate", "INFO") as logs:
            reader, writer = await aio.open_connection("127.0.0.1", self.port, "alice", KEY,
                                                       mode=modes()[-1])
            with self.assertRaises((linkgate.LinkgateError, ConnectionResetError)):
                await asyncio.wait_for(reader.read(), 5)
                raise AssertionError("a clean end")
            writer.close()
        self.assertTrue(any("the handler failed" in line for line in logs.output))


@requires_sealed
class AioSealed(unittest.IsolatedAsyncioTestCase):
    async def test_truncation_and_tampering_are_refused(self):
        outcome = asyncio.get_running_loop().create_future()

        async def handler(reader, writer, key_id):
            received = b""
            try:
                while True:
                    data = await reader.read(65536)
                    if not data:
                        break
                    received += data
                outcome.set_result((received, None))
            except linkgate.LinkgateError as err:
                outcome.set_result((received, err))

        server = await aio.start_server(handler, "127.0.0.1", 0, {"alice": KEY})
        port = server.sockets[0].getsockname()[1]
        try:
            # Truncation: a TCP end without close_notify.
            reader, writer = await aio.open_connection("127.0.0.1", port, "alice", KEY)
            writer.write(b"cut")
            await writer.drain()
            writer.transport.write_eof()
            received, error = await asyncio.wait_for(outcome, 5)
            self.assertEqual(received, b"cut")
            self.assertIsInstance(error, linkgate.Truncated)
            writer.close()

            # Tampering: a record with a flipped bit, written under the seal.
            outcome = asyncio.get_running_loop().create_future()
            reader, writer = await aio.open_connection("127.0.0.1", port, "alice", KEY)
            writer.write(b"intact")
            await writer.drain()
            record = bytearray(writer._conn.layer.seal(b"tampered"))
            record[8] ^= 0x10
            writer.transport.write(bytes(record))
            received, error = await asyncio.wait_for(outcome, 5)
            self.assertEqual(received, b"intact", "nothing of the tampered record")
            self.assertEqual(error.reason, "record_bad_tag")
            with self.assertRaises(linkgate.LinkgateError):
                await asyncio.wait_for(reader.read(), 5)
            writer.close()
        finally:
            server.close()
            await server.wait_closed()


if __name__ == "__main__":
    unittest.main()
