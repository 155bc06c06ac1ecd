"""Unit tests for linkgate.py (stdlib unittest): `python3 -m unittest discover -s python`.

Both halves run over real connected socket pairs, one in a thread, and each refusal is checked
on both sides.
"""

import hmac
import os
import socket
import stat
import tempfile
import threading
import unittest
from pathlib import Path

import linkgate

KEY = bytes(range(32))


def run_in_thread(fn, *args):
    """Runs fn(*args) in a thread; returns a function giving (result, exception)."""
    box = {}

    def target():
        try:
            box["result"] = fn(*args)
        except BaseException as err:  # noqa: BLE001 - handed back to the test
            box["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()

    def join():
        thread.join(10)
        assert not thread.is_alive(), "thread did not finish"
        return box.get("result"), box.get("error")

    return join


class Vector(unittest.TestCase):
    def test_protocol_md_vector(self):
        sn, cn = bytes(range(0xA0, 0xC0)), bytes(range(0xC0, 0xE0))
        self.assertEqual(
            linkgate.client_proof(KEY, sn, cn, "alice").hex(),
            "bed3e3ecfa58491b058867989079da57f9746b3f285205156a73b27541d531fb")
        self.assertEqual(
            linkgate.server_proof(KEY, sn, cn, "alice").hex(),
            "14cdae2966d718ebc280da829f85883ea98aaf6e9f0c06df11065f399d99a830")
        response = linkgate.encode_response(KEY, "alice", sn, cn)
        self.assertEqual(response[:7], b"\x00\x05alice")
        self.assertEqual(len(response), 71)

    def test_seed_answer_is_the_recipe_hmac(self):
        nonce = os.urandom(32)
        self.assertEqual(linkgate.seed_answer(b"secret", nonce),
                         hmac.new(b"secret", nonce, "sha256").digest())


class KeyFiles(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.addCleanup(self.dir.cleanup)

    def write(self, name, text, mode=0o600):
        path = Path(self.dir.name) / name
        path.write_text(text)
        path.chmod(mode)
        return path

    def refused(self, path, fragment, loader=linkgate.load_key):
        with self.assertRaises(linkgate.KeyFileError) as caught:
            loader(path)
        self.assertIn(str(path), str(caught.exception))
        self.assertIn(fragment, str(caught.exception))
        return caught.exception

    def test_good_key(self):
        self.assertEqual(linkgate.load_key(self.write("a.key", "  " + KEY.hex() + "\n")), KEY)

    def test_refusals(self):
        self.refused(Path(self.dir.name) / "missing.key", "cannot read")
        err = self.refused(self.write("text.key", "my password"), "not a hex key")
        self.assertNotIn("password", str(err))
        self.refused(self.write("short.key", "ab" * 15), "15 bytes")
        self.refused(self.write("long.key", "ab" * 65), "65 bytes")
        if os.name == "posix":
            self.refused(self.write("open.key", KEY.hex(), 0o644), "too open")
            self.assertEqual(linkgate.load_key(self.write("o.key", KEY.hex(), 0o640),
                                               check_permissions=False), KEY)

    def test_seed_keys_may_be_short(self):
        path = self.write("recipe.key", b"secret".hex())
        self.refused(path, "6 bytes")
        self.assertEqual(linkgate.load_seed_key(path), b"secret")

    def test_keyring(self):
        self.write("alice.key", KEY.hex())
        self.write("bob.key", "cd" * 32)
        self.write("README.md", "not a key")
        self.assertEqual(sorted(linkgate.load_keyring(self.dir.name)), ["alice", "bob"])


class Handshake(unittest.TestCase):
    def setUp(self):
        self.client, self.server = socket.socketpair()
        self.addCleanup(self.client.close)
        self.addCleanup(self.server.close)
        self.keyring = {"alice": KEY, "bob": os.urandom(32)}

    def serve(self, timeout=5.0):
        return run_in_thread(linkgate.admit, self.server, self.keyring, timeout)

    def test_admitted_and_bytes_right_after_stay(self):
        join = self.serve()
        linkgate.authenticate(self.client, "alice", KEY)
        self.client.sendall(b"app bytes")
        key_id, error = join()
        self.assertIsNone(error)
        self.assertEqual(key_id, "alice")
        self.assertEqual(self.server.recv(100), b"app bytes")

    def test_admit_reads_exactly_the_response(self):
        # RESPONSE and application bytes in a single write: admit must leave the latter.
        join = self.serve()
        challenge = self.client.recv(40)
        server_nonce = challenge[8:]
        client_nonce = os.urandom(32)
        self.client.sendall(
            linkgate.encode_response(KEY, "alice", server_nonce, client_nonce) + b"app bytes")
        key_id, error = join()
        self.assertIsNone(error)
        self.assertEqual(key_id, "alice")
        self.server.settimeout(2)  # an admit that over-read would leave nothing: fail, not hang
        self.assertEqual(self.server.recv(100), b"app bytes")
        verdict = self.client.recv(33)
        self.assertEqual(verdict[:1], b"\x00")
        self.assertEqual(verdict[1:],
                         linkgate.server_proof(KEY, server_nonce, client_nonce, "alice"))

    def test_wrong_key_denied_on_both_sides(self):
        join = self.serve()
        with self.assertRaises(linkgate.Denied):
            linkgate.authenticate(self.client, "alice", os.urandom(32))
        _, error = join()
        self.assertIsInstance(error, linkgate.Denied)
        self.assertEqual(error.reason, "wrong proof for key id alice")

    def test_unknown_id_denied_the_same_way(self):
        join = self.serve()
        with self.assertRaises(linkgate.Denied) as client_side:
            linkgate.authenticate(self.client, "zed", KEY)
        self.assertEqual(str(client_side.exception), "denied by server")
        _, error = join()
        self.assertEqual(error.reason, "unknown key id zed")

    def test_malformed_response(self):
        join = self.serve()
        challenge = self.client.recv(40)
        self.assertEqual(challenge[:8], linkgate.MAGIC)
        self.client.sendall(b"\x00\x00" + bytes(64))
        self.assertEqual(self.client.recv(10), b"\x02")
        _, error = join()
        self.assertIsInstance(error, linkgate.Malformed)
        self.assertIn("length 0", str(error))

    def test_silent_client_times_out(self):
        join = self.serve(timeout=0.2)
        self.client.recv(40)
        _, error = join()
        self.assertIsInstance(error, linkgate.HandshakeTimeout)

    def test_impostor_server(self):
        def impostor():
            self.server.sendall(linkgate.MAGIC + os.urandom(32))
            self.server.recv(200)
            self.server.sendall(b"\x00" + os.urandom(32))

        join = run_in_thread(impostor)
        with self.assertRaises(linkgate.ImpostorServer):
            linkgate.authenticate(self.client, "alice", KEY)
        join()

    def test_not_linkgate(self):
        self.server.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
        with self.assertRaises(linkgate.NotLinkgate) as caught:
            linkgate.authenticate(self.client, "alice", KEY, timeout=2)
        self.assertIn("SSH-2.0-OpenSSH_9.2", str(caught.exception))

    def test_client_timeout(self):
        with self.assertRaises(linkgate.HandshakeTimeout):
            linkgate.authenticate(self.client, "alice", KEY, timeout=0.2)

    def test_bad_arguments(self):
        with self.assertRaises(ValueError):
            linkgate.authenticate(self.client, "al ice", KEY)
        with self.assertRaises(ValueError):
            linkgate.authenticate(self.client, "alice", b"short")


class Seed(unittest.TestCase):
    def setUp(self):
        self.client, self.server = socket.socketpair()
        self.addCleanup(self.client.close)
        self.addCleanup(self.server.close)

    def test_round_trip_and_wrong_key(self):
        join = run_in_thread(linkgate.seed_admit, self.server, b"secret")
        linkgate.seed_authenticate(self.client, b"secret")
        self.assertEqual(join(), (True, None))

        join = run_in_thread(linkgate.seed_admit, self.server, b"secret")
        linkgate.seed_authenticate(self.client, b"guess")
        self.assertEqual(join(), (False, None))


if __name__ == "__main__":
    unittest.main()
