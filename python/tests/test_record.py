"""The record layer's edge cases, with no I/O: lengths, headers, types, order, key updates and
their limits, close_notify and truncation."""

import struct
import unittest

import linkgate
from _support import requires_sealed

SECRET = bytes(range(100, 132))


def records(wire):
    """Splits sealed bytes into records."""
    out, pos = [], 0
    while pos < len(wire):
        length = 5 + struct.unpack(">H", wire[pos + 3:pos + 5])[0]
        out.append(wire[pos:pos + length])
        pos += length
    return out


@requires_sealed
class Records(unittest.TestCase):
    def setUp(self):
        from linkgate import record
        self.record = record

    def pair(self, **limits):
        sealer = self.record.Sealer(SECRET, limits.get("interval"))
        opener = self.record.Opener(SECRET, limits.get("limit"))
        return sealer, opener

    def assertRefused(self, reason, fn, *args):
        with self.assertRaises(linkgate.RecordError) as caught:
            fn(*args)
        self.assertEqual(caught.exception.reason, reason)
        self.assertIsInstance(caught.exception, linkgate.LinkgateError)
        return caught.exception

    def test_round_trip_and_the_16384_byte_limit(self):
        sealer, opener = self.pair()
        data = bytes(range(256)) * 200  # 51200 bytes: four records
        wire = sealer.seal(data)
        pieces = records(wire)
        self.assertEqual([len(p) - 5 - 17 for p in pieces], [16384, 16384, 16384, 2048])
        self.assertTrue(all(p[:3] == b"\x17\x03\x03" for p in pieces))
        self.assertEqual(b"".join(opener.open(p)[1] for p in pieces), data)
        self.assertEqual(sealer.seal(b""), b"", "no record for no data")

    def test_header_and_length_are_checked_before_the_body(self):
        Opener = self.record.Opener
        self.assertIsNone(Opener.record_len(b"\x17\x03\x03\x00"))
        self.assertEqual(Opener.record_len(b"\x17\x03\x03\x40\x11"), 5 + 16401)
        self.assertEqual(Opener.record_len(b"\x17\x03\x03\x00\x11"), 5 + 17)
        self.assertRefused("record_bad_header", Opener.record_len, b"\x16\x03\x03\x00\x20")
        self.assertRefused("record_bad_header", Opener.record_len, b"\x17\x03\x01\x00\x20")
        self.assertRefused("record_bad_length", Opener.record_len, b"\x17\x03\x03\x00\x10")
        self.assertRefused("record_bad_length", Opener.record_len, b"\x17\x03\x03\x40\x12")
        layer = self.record.RecordLayer(SECRET, SECRET)
        # Only 5 bytes of a record with a bad header: refused without waiting for the body.
        self.assertRefused("record_bad_header", layer.feed, b"GET /")

    def test_tampered_reordered_replayed_or_dropped_records_fail_authentication(self):
        sealer, _ = self.pair()
        one, two, three = (sealer.seal(b"x" * n) for n in (10, 20, 30))
        flipped = bytearray(two)
        flipped[12] ^= 0x01
        # Each sequence: the records that open, then the one refused.
        for name, sequence in [("flip", [one, bytes(flipped)]), ("swap", [two]),
                               ("replay", [one, one]), ("drop", [one, three])]:
            _, opener = self.pair()
            with self.subTest(name):
                for piece in sequence[:-1]:
                    self.assertEqual(opener.open(piece)[0], "data")
                self.assertRefused("record_bad_tag", opener.open, sequence[-1])

    def test_only_the_allowed_messages(self):
        sealer = self.record.Sealer(SECRET)
        for content_type, data in [(0x17, b""), (0x15, b"\x02\x28"), (0x15, b"\x01"),
                                   (0x16, b"\x18\x00\x00\x01\x01"), (0x16, b"\x01"),
                                   (0x18, b"data"), (0x14, b"\x01")]:
            with self.subTest(content_type=content_type, data=data):
                opener = self.record.Opener(SECRET)
                sealer = self.record.Sealer(SECRET)
                self.assertRefused("record_unexpected_message", opener.open,
                                   sealer._record(data, content_type))

    def test_close_notify_then_nothing(self):
        sealer, _ = self.pair()
        layer = self.record.RecordLayer(b"\0" * 32, SECRET)
        wire = sealer.seal(b"last words") + sealer.seal_close_notify()
        self.assertEqual(layer.feed(wire), b"last words")
        self.assertTrue(layer.read_closed)
        layer.eof()  # a TCP end after close_notify is clean
        self.assertRefused("record_data_after_close", layer.feed, b"x")

        # Bytes after close_notify in the same read are refused too (after the data before).
        sealer, _ = self.pair()
        layer = self.record.RecordLayer(b"\0" * 32, SECRET)
        self.assertEqual(layer.feed(sealer.seal(b"a") + sealer.seal_close_notify() + b"\x17"),
                         b"a")
        self.assertEqual(layer.error.reason, "record_data_after_close")
        sealer, _ = self.pair()
        layer = self.record.RecordLayer(b"\0" * 32, SECRET)
        self.assertRefused("record_data_after_close", layer.feed,
                           sealer.seal_close_notify() + b"\x17")

    def test_truncation_is_an_error(self):
        sealer, _ = self.pair()
        layer = self.record.RecordLayer(b"\0" * 32, SECRET)
        wire = sealer.seal(b"cut short")
        self.assertEqual(layer.feed(wire[:-3]), b"", "half a record gives nothing")
        with self.assertRaises(linkgate.Truncated) as caught:
            layer.eof()
        self.assertEqual(caught.exception.reason, "record_truncated")
        self.assertIn("without close_notify", str(caught.exception))

    def test_byte_by_byte(self):
        sealer, _ = self.pair()
        layer = self.record.RecordLayer(b"\0" * 32, SECRET)
        data = bytes(range(256)) * 100
        wire = sealer.seal(data) + sealer.seal_close_notify()
        got = b"".join(layer.feed(wire[i:i + 1]) for i in range(len(wire)))
        self.assertEqual(got, data)
        self.assertTrue(layer.read_closed)

    def test_records_before_a_failed_one_are_delivered_then_the_failure(self):
        sealer, _ = self.pair()
        layer = self.record.RecordLayer(b"\0" * 32, SECRET)
        good = sealer.seal(b"good")
        bad = bytearray(sealer.seal(b"bad"))
        bad[-1] ^= 0x80
        self.assertEqual(layer.feed(good + bytes(bad)), b"good")
        self.assertEqual(layer.error.reason, "record_bad_tag")
        self.assertRefused("record_bad_tag", layer.feed, b"")

    def test_the_sender_updates_its_key_at_the_latest_as_the_intervals_last_record(self):
        for interval in (2, 3, 4, 10):
            sealer, opener = self.pair(interval=interval)
            with self.subTest(interval=interval):
                wire = b"".join(sealer.seal(bytes([i])) for i in range(50))
                wire += sealer.seal_close_notify()
                under_key, got = 0, []
                for piece in records(wire):
                    kind, data = opener.open(piece)
                    under_key += 1
                    self.assertLessEqual(under_key, interval)
                    if kind == "key_update":
                        self.assertEqual(under_key, interval, "as late as allowed")
                        under_key = 0
                    elif kind == "data":
                        got.append(data)
                self.assertEqual(b"".join(got), bytes(range(50)))
                self.assertTrue(opener.closed)

    def test_the_interval_is_clamped_and_read_from_the_module(self):
        self.assertEqual(self.record.Sealer(SECRET, 1).key_update_interval, 2)
        self.assertEqual(self.record.Sealer(SECRET, 1 << 30).key_update_interval, 1 << 20)
        self.assertEqual(self.record.Sealer(SECRET).key_update_interval, 1 << 20)
        self.assertEqual(self.record.Opener(SECRET).max_records_per_key, (1 << 24) - 1)
        saved = self.record.KEY_UPDATE_INTERVAL
        self.record.KEY_UPDATE_INTERVAL = 5
        try:
            self.assertEqual(self.record.Sealer(SECRET).key_update_interval, 5)
        finally:
            self.record.KEY_UPDATE_INTERVAL = saved

    def test_the_receiver_refuses_a_record_past_its_limit_under_one_key(self):
        sealer, opener = self.pair(limit=3)
        pieces = records(b"".join(sealer.seal(b"x") for _ in range(4)))
        for piece in pieces[:3]:
            self.assertEqual(opener.open(piece), ("data", b"x"))
        self.assertRefused("record_too_many", opener.open, pieces[3])

        # A KeyUpdate starts the count again.
        sealer, opener = self.pair(limit=3, interval=3)
        for piece in records(b"".join(sealer.seal(b"y") for _ in range(20))):
            opener.open(piece)

    def test_the_protocol_limit_is_2_to_the_24_minus_1(self):
        _, opener = self.pair()
        opener._dir.seq = (1 << 24) - 2
        sealer = self.record.Sealer(SECRET)
        sealer._dir.seq = (1 << 24) - 2
        # The sender would have updated long before; force the records out anyway.
        last = sealer._record(b"x", 0x17)
        past = sealer._record(b"x", 0x17)
        self.assertEqual(opener.open(last), ("data", b"x"))
        self.assertRefused("record_too_many", opener.open, past)

    def test_the_sender_needs_a_key_update_at_2_to_the_20(self):
        sealer = self.record.Sealer(SECRET)
        sealer._dir.seq = (1 << 20) - 2
        self.assertFalse(sealer.needs_key_update())
        sealer._dir.seq = (1 << 20) - 1
        self.assertTrue(sealer.needs_key_update())
        wire = sealer.seal(b"z")
        self.assertEqual(len(records(wire)), 2, "a KeyUpdate, then the data under the new key")
        self.assertEqual(sealer.seq, 1)


if __name__ == "__main__":
    unittest.main()
