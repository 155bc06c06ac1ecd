"""The shared test vectors (tests/vectors/linkgate1.json, computed by tests/vectors/generate.py
from PROTOCOL.md alone): the package's handshake, key schedule and records must give exactly
these bytes, in all three modes. Mode 0x00 needs only the standard library."""

import unittest

import linkgate
from linkgate import protocol
from linkgate.protocol import ClientHandshake, Policy, judge

from _support import load_vectors, requires_sealed

MODE_SECTIONS = {
    "plain": "mode_0x00_plain",
    "sealed": "mode_0x01_sealed",
    "sealed-fs": "mode_0x02_sealed_fs",
}


class Vectors(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.vectors = load_vectors()
        inputs = cls.vectors["inputs"]
        cls.key = bytes.fromhex(inputs["key"])
        cls.server_nonce = bytes.fromhex(inputs["server_nonce"])
        cls.client_nonce = bytes.fromhex(inputs["client_nonce"])
        cls.key_id = inputs["key_id"]
        cls.client_private = bytes.fromhex(inputs["client_x25519_private"])
        cls.server_private = bytes.fromhex(inputs["server_x25519_private"])

    def hexed(self, section, name):
        return bytes.fromhex(self.vectors[section][name])

    def handshake(self, mode):
        """Both halves with the vectors' inputs: (client handshake, RESPONSE, judgement)."""
        client = ClientHandshake(self.key_id, self.key, mode, client_nonce=self.client_nonce,
                                 ephemeral_private=self.client_private
                                 if mode == "sealed-fs" else None)
        response = client.response(self.server_nonce)
        judged = judge(response, self.server_nonce, {self.key_id: self.key},
                       Policy(allow_plain=True),
                       ephemeral_private=self.server_private if mode == "sealed-fs" else None)
        return client, response, judged

    def check_handshake(self, mode):
        section = MODE_SECTIONS[mode]
        self.assertEqual(protocol.encode_challenge(self.server_nonce).hex(),
                         self.vectors["challenge"])
        client, response, judged = self.handshake(mode)
        self.assertEqual(response, self.hexed(section, "response"))
        self.assertEqual(response[-32:], self.hexed(section, "client_proof"))
        self.assertEqual(judged.verdict, self.hexed(section, "verdict"))
        self.assertEqual(judged.verdict[-32:], self.hexed(section, "server_proof"))
        self.assertEqual((judged.key_id, judged.mode), (self.key_id, mode))
        # The client accepts the vector's verdict, and both sides derive the same secrets.
        client_secrets = client.finish(self.hexed(section, "verdict"))
        self.assertEqual(client_secrets, judged.secrets)
        return judged.secrets

    def test_mode_0x00_plain(self):
        secrets = self.check_handshake("plain")
        self.assertIsNone(secrets)
        section = "mode_0x00_plain"
        # The module-level proof functions (plain mode by default) give the same bytes.
        self.assertEqual(
            linkgate.client_proof(self.key, self.server_nonce, self.client_nonce, self.key_id),
            self.hexed(section, "client_proof"))
        self.assertEqual(
            linkgate.server_proof(self.key, self.server_nonce, self.client_nonce, self.key_id),
            self.hexed(section, "server_proof"))
        self.assertEqual(
            linkgate.encode_response(self.key, self.key_id, self.server_nonce, self.client_nonce),
            self.hexed(section, "response"))

    def check_schedule_and_records(self, mode, secrets, shared=b"", shares=(b"", b"")):
        from linkgate.record import Opener, Sealer, next_secret

        section = MODE_SECTIONS[mode]
        prk = protocol.hkdf_extract(self.server_nonce + self.client_nonce, self.key + shared)
        self.assertEqual(prk, self.hexed(section, "prk"))
        self.assertEqual(secrets.c2s, self.hexed(section, "c2s_secret"))
        self.assertEqual(secrets.s2c, self.hexed(section, "s2c_secret"))
        self.assertEqual(protocol.key_schedule(self.key, self.server_nonce, self.client_nonce,
                                               self.key_id, mode, shared, *shares), secrets)
        self.assertEqual(protocol.expand_label(secrets.c2s, b"key", 32),
                         self.hexed(section, "c2s_key"))
        self.assertEqual(protocol.expand_label(secrets.c2s, b"iv", 12),
                         self.hexed(section, "c2s_iv"))
        self.assertEqual(protocol.expand_label(secrets.s2c, b"key", 32),
                         self.hexed(section, "s2c_key"))
        self.assertEqual(protocol.expand_label(secrets.s2c, b"iv", 12),
                         self.hexed(section, "s2c_iv"))

        # Sealing gives the vectors' records, byte for byte...
        c2s = Sealer(secrets.c2s)
        hello = c2s.seal(b"hello")
        self.assertEqual(hello, self.hexed(section, "c2s_record_hello_seq0"))
        close = c2s.seal_close_notify()
        self.assertEqual(close, self.hexed(section, "c2s_record_close_notify_seq1"))
        s2c = Sealer(secrets.s2c)
        update = s2c.seal_key_update()
        self.assertEqual(update, self.hexed(section, "s2c_record_key_update_seq0"))
        self.assertEqual(next_secret(secrets.s2c), self.hexed(section, "s2c_next_secret"))
        world = s2c.seal(b"world")
        self.assertEqual(world, self.hexed(section, "s2c_record_world_after_update_seq0"))

        # ...and opening the vectors' records (as sealed by the Rust crate too) gives the data.
        server = linkgate.record.RecordLayer.for_side(secrets, "server")
        self.assertEqual(server.feed(self.hexed(section, "c2s_record_hello_seq0")), b"hello")
        self.assertFalse(server.read_closed)
        self.assertEqual(server.feed(self.hexed(section, "c2s_record_close_notify_seq1")), b"")
        self.assertTrue(server.read_closed)
        client = Opener(secrets.s2c)
        self.assertEqual(client.open(self.hexed(section, "s2c_record_key_update_seq0")),
                         ("key_update", b""))
        self.assertEqual(client.open(self.hexed(section, "s2c_record_world_after_update_seq0")),
                         ("data", b"world"))

    @requires_sealed
    def test_mode_0x01_sealed(self):
        secrets = self.check_handshake("sealed")
        self.check_schedule_and_records("sealed", secrets)

    @requires_sealed
    def test_mode_0x02_sealed_fs(self):
        section = "mode_0x02_sealed_fs"
        from linkgate._crypto import Ephemeral

        client_share = Ephemeral(self.client_private)
        server_share = Ephemeral(self.server_private)
        self.assertEqual(client_share.public, self.hexed(section, "client_share"))
        self.assertEqual(server_share.public, self.hexed(section, "server_share"))
        shared = client_share.agree(server_share.public, "server")
        self.assertEqual(shared, self.hexed(section, "shared_secret"))
        self.assertEqual(server_share.agree(client_share.public, "client"), shared)
        secrets = self.check_handshake("sealed-fs")
        self.check_schedule_and_records("sealed-fs", secrets, shared,
                                        (client_share.public, server_share.public))


if __name__ == "__main__":
    unittest.main()
