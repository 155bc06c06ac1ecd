"""Both halves of the handshake over real TCP sockets on 127.0.0.1, one in a thread, in every
mode; each refusal is checked on both sides."""

import hmac
import os
import socket
import struct
import unittest
from unittest import mock

import linkgate
from linkgate import protocol

from _support import KEY, modes, requires_sealed, run_in_thread, tcp_pair


class Handshake(unittest.TestCase):
    def setUp(self):
        self.client, self.server = tcp_pair()
        self.addCleanup(self.client.close)
        self.addCleanup(self.server.close)
        self.keyring = {"alice": KEY, "bob": os.urandom(32)}

    def serve(self, timeout=5.0, **policy):
        policy.setdefault("allow_plain", True)
        return run_in_thread(linkgate.admit, self.server, self.keyring, timeout=timeout,
                             **policy)

    def test_admitted_in_every_mode_with_data_both_ways(self):
        for mode in modes():
            with self.subTest(mode=mode):
                self.setUp()
                join = self.serve()
                stream = linkgate.authenticate(self.client, "alice", KEY, mode=mode)
                admission, error = join()
                self.assertIsNone(error)
                self.assertEqual(admission.key_id, "alice")
                self.assertEqual(admission.mode, mode)
                server_stream, key_id = admission
                stream.sendall(b"ping")
                self.assertEqual(server_stream.recv(100), b"ping")
                server_stream.sendall(b"pong")
                self.assertEqual(stream.recv(100), b"pong")
                if mode == "plain":
                    self.assertIs(stream, self.client)
                    self.assertIs(server_stream, self.server)
                else:
                    self.assertIsInstance(stream, linkgate.SealedSocket)
                    self.assertEqual((stream.key_id, stream.mode), ("alice", mode))

    def test_admit_reads_exactly_the_response(self):
        # RESPONSE and application bytes in a single write: admit must leave the latter.
        join = self.serve()
        challenge = self.client.recv(40)
        server_nonce = challenge[8:]
        client_nonce = os.urandom(32)
        self.client.sendall(
            linkgate.encode_response(KEY, "alice", server_nonce, client_nonce) + b"app bytes")
        (stream, key_id), error = join()
        self.assertIsNone(error)
        self.assertEqual(key_id, "alice")
        self.server.settimeout(2)  # an admit that over-read would leave nothing: fail, not hang
        self.assertEqual(stream.recv(100), b"app bytes")
        verdict = self.client.recv(33)
        self.assertEqual(verdict[:1], b"\x00")
        self.assertEqual(verdict[1:],
                         linkgate.server_proof(KEY, server_nonce, client_nonce, "alice"))

    @requires_sealed
    def test_a_sealed_client_may_send_records_right_after_its_response(self):
        from linkgate.record import RecordLayer
        join = self.serve()
        handshake = protocol.ClientHandshake("alice", KEY, "sealed")
        response = handshake.response(self.client.recv(40)[8:])
        # Mode 0x01: the client has its keys before the verdict.
        secrets = protocol.key_schedule(KEY, handshake._server_nonce, handshake._client_nonce,
                                        "alice", "sealed")
        early = RecordLayer.for_side(secrets, "client").seal(b"early")
        self.client.sendall(response + early)
        (stream, _), error = join()
        self.assertIsNone(error)
        self.assertEqual(stream.recv(100), b"early")
        self.assertEqual(handshake.finish(self.client.recv(33)), secrets)

    def test_wrong_key_denied_on_both_sides(self):
        for mode in modes():
            with self.subTest(mode=mode):
                self.setUp()
                join = self.serve()
                with self.assertRaises(linkgate.Denied) as caught:
                    linkgate.authenticate(self.client, "alice", os.urandom(32), mode=mode)
                self.assertEqual(str(caught.exception), "denied by the server")
                self.assertEqual(caught.exception.reason, "denied")
                _, error = join()
                self.assertIsInstance(error, linkgate.Denied)
                self.assertEqual(error.reason, "wrong_proof")
                self.assertEqual(error.key_id, "alice")
                self.assertEqual(str(error), "denied: wrong proof for key id alice")

    def test_unknown_id_denied_the_same_way(self):
        join = self.serve()
        with self.assertRaises(linkgate.Denied) as client_side:
            linkgate.authenticate(self.client, "zed", KEY, mode="plain")
        self.assertEqual(str(client_side.exception), "denied by the server")
        _, error = join()
        self.assertEqual(error.reason, "unknown_key_id")
        self.assertEqual(str(error), "denied: unknown key id zed")

    def test_malformed_responses(self):
        cases = [
            (b"\x00\x00" + bytes(64), "key id length 0 is outside 1..=64"),
            (b"\x00\x41" + bytes(200), "key id length 65 is outside 1..=64"),
            (b"\x03\x05", "reserved mode 0x03"),
            (b"\x00\x05al ce" + bytes(64), "key id has a forbidden character"),
        ]
        for response, reason in cases:
            with self.subTest(reason):
                self.setUp()
                join = self.serve()
                challenge = self.client.recv(40)
                self.assertEqual(challenge[:8], linkgate.MAGIC)
                self.client.sendall(response)
                self.assertEqual(self.client.recv(10), b"\x02")
                _, error = join()
                self.assertIsInstance(error, linkgate.Malformed)
                self.assertEqual(str(error), f"malformed response: {reason}")

    def test_a_multiplexed_tunnel_is_refused_as_a_mode_this_package_does_not_serve(self):
        for byte, name in ((0x11, "sealed+mux"), (0x12, "sealed-fs+mux")):
            with self.subTest(mode=name):
                self.setUp()
                join = self.serve()
                self.assertEqual(self.client.recv(40)[:8], linkgate.MAGIC)
                self.client.sendall(bytes([byte, 5]) + b"alice" + bytes(96))
                self.assertEqual(self.client.recv(10), b"\x02")
                _, error = join()
                self.assertIsInstance(error, linkgate.ModeNotAllowed)
                self.assertEqual(error.reason, "mode_not_allowed")
                self.assertEqual(str(error), f"mode {name} refused by policy: multiplexed "
                                             "tunnels are not supported by this package")

    def test_policy_refusals_send_malformed(self):
        cases = [("plain", {"allow_plain": False}, "plain mode is not allowed"),
                 ("sealed", {"require_forward_secrecy": True}, "forward secrecy is required")]
        for mode, policy, why in cases:
            if not linkgate.sealed_modes_available():
                continue  # a server that refuses plain mode needs the sealed modes
            with self.subTest(mode=mode):
                self.setUp()
                join = self.serve(**policy)
                with self.assertRaises(linkgate.RefusedAsMalformed) as caught:
                    linkgate.authenticate(self.client, "alice", KEY, mode=mode)
                self.assertEqual(caught.exception.mode, mode)
                self.assertIn(f"it may not allow mode {mode}", str(caught.exception))
                _, error = join()
                self.assertIsInstance(error, linkgate.ModeNotAllowed)
                self.assertEqual(error.reason, "mode_not_allowed")
                self.assertIn(f"mode {mode} refused by policy: {why}", str(error))

    def test_silent_client_times_out_and_the_message_shows_the_setting(self):
        join = self.serve(timeout=0.3)
        self.client.recv(40)
        _, error = join()
        self.assertIsInstance(error, linkgate.HandshakeTimeout)
        self.assertIsInstance(error, TimeoutError)
        self.assertEqual(str(error),
                         "handshake timed out after 300ms waiting for the client's response")
        self.assertEqual(error.after, 0.3)

    def test_client_timeouts_show_the_setting(self):
        with self.assertRaises(linkgate.HandshakeTimeout) as caught:
            linkgate.authenticate(self.client, "alice", KEY, mode="plain", timeout=0.25)
        self.assertTrue(str(caught.exception).startswith(
            "timed out after 250ms: the server sent nothing"), str(caught.exception))
        self.setUp()
        self.server.sendall(linkgate.MAGIC + os.urandom(32))
        with self.assertRaises(linkgate.HandshakeTimeout) as caught:
            linkgate.authenticate(self.client, "alice", KEY, mode="plain", timeout=1.5)
        self.assertEqual(str(caught.exception),
                         "handshake timed out after 1.500s waiting for the server's verdict")
        self.assertIsNone(self.client.gettimeout(), "the socket's own timeout is restored")

    def test_impostor_server(self):
        for mode in modes():
            with self.subTest(mode=mode):
                self.setUp()

                def impostor(mode=mode):
                    self.server.sendall(linkgate.MAGIC + os.urandom(32))
                    self.server.recv(200)
                    share = os.urandom(32) if mode == "sealed-fs" else b""
                    self.server.sendall(b"\x00" + share + os.urandom(32))

                join = run_in_thread(impostor)
                with self.assertRaises(linkgate.ImpostorServer):
                    linkgate.authenticate(self.client, "alice", KEY, mode=mode)
                join()

    def test_an_admission_cut_short_is_an_impostor(self):
        def cut():
            self.server.sendall(linkgate.MAGIC + os.urandom(32))
            self.server.recv(200)
            self.server.sendall(b"\x00" + os.urandom(10))
            self.server.shutdown(socket.SHUT_WR)

        join = run_in_thread(cut)
        with self.assertRaises(linkgate.ImpostorServer):
            linkgate.authenticate(self.client, "alice", KEY, mode="plain")
        join()

    def test_unknown_verdict_byte(self):
        def odd():
            self.server.sendall(linkgate.MAGIC + os.urandom(32))
            self.server.recv(200)
            self.server.sendall(b"\x07")

        join = run_in_thread(odd)
        with self.assertRaises(linkgate.MalformedVerdict) as caught:
            linkgate.authenticate(self.client, "alice", KEY, mode="plain")
        self.assertIn("byte 0x07", str(caught.exception))
        join()

    def test_not_linkgate(self):
        self.server.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
        with self.assertRaises(linkgate.NotLinkgate) as caught:
            linkgate.authenticate(self.client, "alice", KEY, mode="plain", timeout=2)
        self.assertIn("SSH-2.0-OpenSSH_9.2", str(caught.exception))

    def test_closed_early_on_both_sides(self):
        self.server.close()
        with self.assertRaises(linkgate.ClosedEarly):
            linkgate.authenticate(self.client, "alice", KEY, mode="plain")
        self.setUp()
        join = self.serve()
        self.client.recv(40)
        self.client.sendall(b"\x00\x05ali")
        self.client.shutdown(socket.SHUT_WR)
        _, error = join()
        self.assertIsInstance(error, linkgate.ClosedEarly)

    def test_a_reset_during_the_handshake_is_a_linkgate_error(self):
        join = self.serve()
        self.client.recv(40)
        self.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.client.close()
        _, error = join()
        self.assertIsInstance(error, (linkgate.PeerReset, linkgate.ClosedEarly))
        if isinstance(error, linkgate.PeerReset):
            self.assertIsInstance(error, ConnectionResetError)
            self.assertIsInstance(error.__cause__, OSError)

        # Client side: the server resets after the challenge.
        self.setUp()

        def resetter():
            self.server.sendall(linkgate.MAGIC + os.urandom(32))
            self.server.recv(200)
            self.server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.server.close()

        join = run_in_thread(resetter)
        with self.assertRaises(linkgate.LinkgateError) as caught:
            linkgate.authenticate(self.client, "alice", KEY, mode="plain")
        self.assertIsInstance(caught.exception, (linkgate.PeerReset, linkgate.ClosedEarly))
        if isinstance(caught.exception, linkgate.PeerReset):
            self.assertIsInstance(caught.exception.__cause__, ConnectionResetError)
            self.assertEqual(caught.exception.reason, "peer_reset")
        join()

    @requires_sealed
    def test_a_client_share_giving_an_all_zero_secret_is_refused(self):
        join = self.serve()
        server_nonce = self.client.recv(40)[8:]
        client_nonce = os.urandom(32)
        zero_share = bytes(32)
        self.client.sendall(linkgate.encode_response(KEY, "alice", server_nonce, client_nonce,
                                                     "sealed-fs", zero_share))
        self.assertEqual(self.client.recv(10), b"\x02")
        _, error = join()
        self.assertIsInstance(error, linkgate.KeyExchangeFailed)
        self.assertIn("the client's public key is invalid", str(error))

    def test_bad_arguments(self):
        with self.assertRaises(linkgate.InvalidArgument):
            linkgate.authenticate(self.client, "al ice", KEY)
        with self.assertRaises(ValueError):
            linkgate.authenticate(self.client, "alice", b"short")
        with self.assertRaises(linkgate.InvalidArgument) as caught:
            linkgate.authenticate(self.client, "alice", KEY, mode="tls")
        self.assertIn("unknown mode 'tls'", str(caught.exception))
        with self.assertRaises(linkgate.InvalidArgument):
            linkgate.authenticate(self.client, "alice")

    def test_a_key_object_alone_is_enough(self):
        join = self.serve()
        stream = linkgate.authenticate(self.client, linkgate.Key("alice", KEY), mode=modes()[-1])
        (_, key_id), error = join()
        self.assertIsNone(error)
        self.assertEqual(key_id, "alice")
        self.assertEqual(getattr(stream, "mode", "plain"), modes()[-1])

    def test_without_cryptography_sealed_modes_say_how_to_get_them(self):
        from linkgate import _crypto
        saved = (_crypto._loaded, _crypto._import_error)
        _crypto._loaded, _crypto._import_error = None, ImportError("No module named 'x'")
        try:
            for call in (lambda: linkgate.authenticate(self.client, "alice", KEY),
                         lambda: linkgate.connect(("127.0.0.1", 9), "alice", KEY),
                         lambda: linkgate.admit(self.server, {"alice": KEY})):
                with self.assertRaises(linkgate.CryptographyMissing) as caught:
                    call()
                self.assertIn('pip install "linkgate[sealed]"', str(caught.exception))
                self.assertTrue('mode="plain"' in str(caught.exception)
                                or "allow_plain=True" in str(caught.exception))
                self.assertIsInstance(caught.exception, ImportError)
                self.assertIsInstance(caught.exception.__cause__, ImportError)
            # Plain mode still works, and a server that allows plain refuses the sealed modes
            # by policy.
            join = self.serve()
            stream = linkgate.authenticate(self.client, "alice", KEY, mode="plain")
            self.assertIs(stream, self.client)
            self.assertIsNone(join()[1])
        finally:
            _crypto._loaded, _crypto._import_error = saved

    def test_each_mode_has_its_own_proof(self):
        sn, cn = os.urandom(32), os.urandom(32)
        proofs = {mode: protocol.client_proof(KEY, sn, cn, "alice", mode)
                  for mode in linkgate.MODES}
        self.assertEqual(len(set(proofs.values())), 3, "each mode has its own proof")
        self.assertEqual(proofs["plain"], linkgate.client_proof(KEY, sn, cn, "alice"))

    def test_both_proofs_are_checked_with_compare_digest(self):
        """The server's check of the client's proof and the client's check of the server's
        go through hmac.compare_digest (constant time), right or wrong."""
        def flipped(data):
            return data[:-1] + bytes([data[-1] ^ 1])

        sn = os.urandom(32)
        policy = protocol.Policy(allow_plain=True)
        with mock.patch.object(protocol.hmac, "compare_digest",
                               wraps=hmac.compare_digest) as compared:
            client = protocol.ClientHandshake("alice", KEY, mode="plain")
            response = client.response(sn)
            with self.assertRaises(linkgate.Denied):
                protocol.judge(flipped(response), sn, {"alice": KEY}, policy)
            self.assertEqual(compared.call_count, 1)
            self.assertEqual(compared.call_args.args[1], flipped(response)[-32:])

            judgement = protocol.judge(response, sn, {"alice": KEY}, policy)
            self.assertEqual(compared.call_count, 2)
            self.assertEqual(compared.call_args.args[1], response[-32:])

            with self.assertRaises(linkgate.ImpostorServer):
                client.finish(flipped(judgement.verdict))
            self.assertEqual(compared.call_count, 3)
            self.assertEqual(compared.call_args.args[1], flipped(judgement.verdict)[-32:])
            self.assertIsNone(client.finish(judgement.verdict))
            self.assertEqual(compared.call_count, 4)


class Arguments(unittest.TestCase):
    def test_a_bad_address_or_timeout_is_an_invalid_argument(self):
        for address in ["127.0.0.1:7700", ("127.0.0.1",), ("127.0.0.1", "7700"), None]:
            with self.subTest(address=address):
                with self.assertRaises(linkgate.InvalidArgument) as caught:
                    linkgate.connect(address, "alice", KEY, mode="plain")
                self.assertIn("an address is (host, port)", str(caught.exception))
        for timeout in ["x", 0, -1, float("nan"), True]:
            with self.subTest(timeout=timeout):
                with self.assertRaises(linkgate.InvalidArgument):
                    linkgate.connect(("127.0.0.1", 9), "alice", KEY, mode="plain",
                                     timeout=timeout)

    def test_a_closed_server_still_knows_its_address(self):
        server = linkgate.serve(lambda stream, key_id: None, "127.0.0.1", 0, {"alice": KEY})
        port = server.port
        server.close()
        self.assertEqual(server.port, port)
        self.assertIn(str(port), repr(server))


class Seed(unittest.TestCase):
    def setUp(self):
        self.client, self.server = tcp_pair()
        self.addCleanup(self.client.close)
        self.addCleanup(self.server.close)

    def test_round_trip_and_wrong_key(self):
        join = run_in_thread(linkgate.seed_admit, self.server, b"secret")
        linkgate.seed_authenticate(self.client, b"secret")
        self.assertEqual(join(), (True, None))

        join = run_in_thread(linkgate.seed_admit, self.server, linkgate.Key("recipe", b"secret"))
        linkgate.seed_authenticate(self.client, b"guess")
        self.assertEqual(join(), (False, None))

    def test_the_answer_is_the_recipe_hmac(self):
        nonce = os.urandom(32)
        self.assertEqual(linkgate.seed_answer(b"secret", nonce),
                         hmac.new(b"secret", nonce, "sha256").digest())

    def test_md5_is_the_published_recipe(self):
        # The same vector as the Rust unit test: nonce a0 a1 .. bf, key b"secret".
        nonce = bytes(range(0xa0, 0xc0))
        self.assertEqual(linkgate.seed_answer(b"secret", nonce, "md5").hex(),
                         "90f1ce69e8dbe0d41699df53796cdfe3")
        self.assertEqual(linkgate.seed_answer(b"secret", nonce).hex(),
                         "65836ff26a540958b8d97806aefe0c821cf930a7d5229d6062cc78801dd72daa")
        join = run_in_thread(linkgate.seed_admit, self.server, b"secret", digest="md5")
        linkgate.seed_authenticate(self.client, b"secret", digest="md5")
        self.assertEqual(join(), (True, None))
        with self.assertRaises(linkgate.InvalidArgument) as caught:
            linkgate.seed_answer(b"secret", nonce, "sha1")
        self.assertIn("unknown seed digest 'sha1'", str(caught.exception))

    def test_a_server_of_one_digest_refuses_the_other(self):
        join = run_in_thread(linkgate.seed_admit, self.server, b"secret", digest="md5")
        linkgate.seed_authenticate(self.client, b"secret")  # SHA-256: 32 bytes, 16 judged
        self.assertEqual(join(), (False, None))

    def test_timeouts_and_early_ends(self):
        join = run_in_thread(linkgate.seed_admit, self.server, b"secret", 0.2)
        self.client.recv(32)
        _, error = join()
        self.assertIsInstance(error, linkgate.HandshakeTimeout)
        self.assertIn("after 200ms", str(error))
        self.server.close()
        with self.assertRaises(linkgate.LinkgateError):
            linkgate.seed_authenticate(self.client, b"secret")


if __name__ == "__main__":
    unittest.main()
