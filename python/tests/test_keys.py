"""Key files, with the Rust side's rules: hex, base64 or raw spiped keys, 16 to 64 bytes (1 to 64
for seed), no group or others access, regular files only (never blocking), every bad file of a
directory listed at once."""

import base64
import os
import tempfile
import unittest
from pathlib import Path

import linkgate
from _support import KEY, run_in_thread

POSIX = os.name == "posix"


class KeyFiles(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.dir = Path(self.tmp.name)
        self.dir.chmod(0o700)

    def write(self, name, contents, mode=0o600):
        path = self.dir / name
        path.write_bytes(contents if isinstance(contents, bytes) else contents.encode())
        path.chmod(mode)
        return path

    def refused(self, path, fragment, loader=linkgate.load_key, **options):
        with self.assertRaises(linkgate.KeyFileError) as caught:
            loader(path, **options)
        self.assertIn(str(path), str(caught.exception))
        self.assertIn(fragment, str(caught.exception))
        return caught.exception

    def test_hex_base64_and_raw_give_the_same_key_and_the_id_is_the_stem(self):
        b64 = base64.b64encode(KEY).decode()
        for name, contents in [("hex", "  " + KEY.hex() + "\r\n"), ("HEX", KEY.hex().upper()),
                               ("b64", b64 + "\n"), ("b64nopad", b64.rstrip("=")),
                               ("raw", KEY)]:
            with self.subTest(name):
                key = linkgate.load_key(self.write(f"{name}.key", contents))
                self.assertEqual(key, linkgate.Key(name, KEY))
                self.assertEqual(key.id, name)
                key_id, secret = key
                self.assertEqual((key_id, secret), (name, KEY))

    def test_the_repr_hides_the_secret(self):
        key = linkgate.load_key(self.write("alice.key", KEY.hex()))
        for text in (repr(key), str(key), f"{key}"):
            self.assertEqual(text, "Key(id='alice', secret=<32 bytes>)")
            self.assertNotIn(KEY.hex()[:8], text)
        # A whole keyring prints its ids only, and is still the dict it always was.
        self.write("bob.key", "cd" * 32)
        keyring = linkgate.load_keyring(self.dir)
        for text in (repr(keyring), str(keyring), f"{keyring}", f"{[keyring]}"):
            self.assertIn("['alice', 'bob']", text)
            self.assertNotIn(repr(KEY)[2:10], text)
            self.assertNotIn("\\x", text)
        self.assertIsInstance(keyring, dict)
        self.assertEqual(keyring["alice"], KEY)
        # What a server keeps of a keyring given in code, and copies of it, print ids only too.
        from linkgate.keys import normalize_keyring
        for kept in (normalize_keyring({"carol": KEY}), keyring.copy()):
            self.assertIsInstance(kept, linkgate.Keyring)
            self.assertNotIn("\\x", repr(kept))

    def test_what_is_no_key_is_refused_and_never_taken_raw(self):
        for name, contents in [("text", "this is not hex at all, just a password!"),
                               ("spaced", KEY.hex()[:32] + " " + KEY.hex()[32:]),
                               ("empty", ""), ("blank", "\n"), ("zz", "zz"),
                               ("badpad", "AAAA==="),
                               ("shortraw", b"\xff\x00\x80"), ("longraw", b"\xff" * 65)]:
            with self.subTest(name):
                err = self.refused(self.write(f"{name}.key", contents), "not a key")
                self.assertNotIn("password", str(err))
                self.assertEqual(err.reason, "key")
                self.assertIsInstance(err, linkgate.LinkgateError)

    def test_nearly_hex_is_a_typo_not_base64(self):
        hex_key = KEY.hex()
        for name, contents, says in [
                ("lost", hex_key[1:], "63 hex digits, an odd number: one is missing or extra"),
                ("mistyped", hex_key[:10] + "g" + hex_key[11:],
                 "character 11 is not a hex digit (0-9, a-f)"),
                ("spaced", hex_key[:10] + "g" + hex_key[11:40] + " " + hex_key[41:],
                 None),
                ("two", hex_key[:10] + "xy" + hex_key[12:],
                 "characters 11 and 12 are not hex digits"),
                ("plus", hex_key[:10] + "+" + hex_key[11:],
                 "character 11 is not a hex digit (0-9, a-f)"),
                ("slash", hex_key[:10] + "/" + hex_key[11:],
                 "character 11 is not a hex digit (0-9, a-f)"),
                ("both", hex_key[:10] + "+/" + hex_key[12:],
                 "characters 11 and 12 are not hex digits")]:
            with self.subTest(name):
                path = self.write(f"{name}.key", contents)
                if says is None:  # a blank inside: no key at all, as the Rust crate says
                    self.refused(path, "not a key")
                else:
                    self.refused(path, "looks like a hex key with a typo: " + says)

    def test_lengths(self):
        self.refused(self.write("short.key", "ab" * 15), "15 bytes long; it must be 16 to 64")
        self.refused(self.write("long.key", "ab" * 65), "65 bytes long")
        self.assertEqual(len(linkgate.load_key(self.write("k16.key", "ab" * 16)).secret), 16)
        self.assertEqual(len(linkgate.load_key(self.write("k64.key", "ab" * 64)).secret), 64)

    def test_seed_keys_may_be_short(self):
        path = self.write("recipe.key", b"secret".hex())
        self.refused(path, "6 bytes")
        self.assertEqual(linkgate.load_seed_key(path), linkgate.Key("recipe", b"secret"))

    @unittest.skipUnless(POSIX, "POSIX permissions")
    def test_permissions(self):
        for mode in (0o644, 0o640, 0o604, 0o620, 0o660):
            with self.subTest(mode=oct(mode)):
                path = self.write(f"open{mode:o}.key", KEY.hex(), mode)
                self.refused(path, f"permissions {mode:04o} are too open")
                self.assertEqual(
                    linkgate.load_key(path, allow_open_permissions=True).secret, KEY)
        self.assertEqual(linkgate.load_key(self.write("ro.key", KEY.hex(), 0o400)).secret, KEY)

    @unittest.skipUnless(POSIX and hasattr(os, "mkfifo"), "FIFOs")
    def test_fifos_devices_and_directories_are_refused_without_blocking(self):
        fifo = self.dir / "fifo.key"
        os.mkfifo(fifo, 0o600)
        join = run_in_thread(linkgate.load_key, fifo)
        _, err = join(timeout=5)
        self.assertIsInstance(err, linkgate.KeyFileError)
        self.assertIn("a FIFO", str(err))
        self.refused(Path("/dev/null"), "a device", key_id="null")
        (self.dir / "dir.key").mkdir()
        self.refused(self.dir / "dir.key", "a directory")
        self.refused(self.dir / "missing.key", "cannot read")

    def test_large_files_are_refused(self):
        self.refused(self.write("big.key", "ab" * 3000), "too large to be a key file")

    def test_bad_stems_and_the_key_id_override(self):
        self.refused(self.write(".hidden.key", KEY.hex()), "not a valid key id")
        self.refused(self.write("my key.key", KEY.hex()), "not a valid key id")
        path = self.write("id_linkgate", KEY.hex())
        self.assertEqual(linkgate.load_key(path, key_id="bob"), linkgate.Key("bob", KEY))
        with self.assertRaises(linkgate.InvalidArgument):
            linkgate.load_key(path, key_id="b o b")

    def test_keyring_loads_every_key_file_and_skips_the_rest(self):
        self.write("alice.key", KEY.hex())
        self.write("bob.key", "cd" * 32)
        self.write("README.md", "not a key")
        self.write(".editor.key", "garbage")
        with self.assertLogs("linkgate", "WARNING") as logs:
            keyring = linkgate.load_keyring(self.dir)
        self.assertEqual(keyring, {"alice": KEY, "bob": bytes([0xCD]) * 32})
        self.assertIn("hidden", logs.output[0])
        # A key file alone is a keyring of one.
        self.assertEqual(linkgate.load_keyring(self.dir / "alice.key"), {"alice": KEY})

    def test_keyring_lists_every_bad_file_at_once(self):
        self.write("alice.key", KEY.hex())
        self.write("a.key", "not a key")
        self.write("b.key", "ab" * 4)
        with self.assertRaises(linkgate.KeyFileError) as caught:
            linkgate.load_keyring(self.dir)
        text = str(caught.exception)
        self.assertTrue(text.startswith(f"2 key files in {self.dir} cannot be used: a.key: not "
                                        "a key"), text)
        self.assertIn("b.key: the key is 4 bytes long", text)
        self.assertEqual([Path(p.path).name for p in caught.exception.problems],
                         ["a.key", "b.key"])

    def test_keyring_refusals(self):
        with self.assertRaises(linkgate.KeyFileError) as caught:
            linkgate.load_keyring(self.dir)
        self.assertIn("no *.key files", str(caught.exception))
        with self.assertRaises(linkgate.KeyFileError):
            linkgate.load_keyring(self.dir / "missing")
        if POSIX:
            self.write("alice.key", KEY.hex())
            self.dir.chmod(0o777)
            try:
                with self.assertRaises(linkgate.KeyFileError) as caught:
                    linkgate.load_keyring(self.dir)
                self.assertIn("group or others can write to it", str(caught.exception))
                self.assertEqual(
                    linkgate.load_keyring(self.dir, allow_open_permissions=True), {"alice": KEY})
            finally:
                self.dir.chmod(0o700)

    def test_keys_given_in_code_are_checked(self):
        with self.assertRaises(linkgate.InvalidArgument) as caught:
            linkgate.connect(("127.0.0.1", 1), "alice", b"short")
        self.assertIsInstance(caught.exception, ValueError)
        self.assertIn("16 to 64 bytes", str(caught.exception))
        for bad_id in ("", "al ice", "x" * 65, "caf\u00e9"):
            with self.assertRaises(linkgate.InvalidArgument):
                linkgate.connect(("127.0.0.1", 1), bad_id, KEY)
        with self.assertRaises(linkgate.InvalidArgument):
            linkgate.connect(("127.0.0.1", 1), linkgate.Key("alice", KEY), KEY)
        key = linkgate.generate_key("carol")
        self.assertEqual((key.id, len(key.secret)), ("carol", 32))
        with self.assertRaises(linkgate.InvalidArgument):
            linkgate.serve(lambda s, k: None, "127.0.0.1", 0, {"alice": b"short"})


if __name__ == "__main__":
    unittest.main()
