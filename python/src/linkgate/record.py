"""The sealed record layer, with no I/O: TLS 1.3 records (RFC 8446 section 5.2) under AES-256-GCM.

::

    record = 17 03 03 || be16(L) || AES-256-GCM(key, nonce = iv XOR be96(seq),
                                                aad = the 5 header bytes,
                                                plaintext = data || type)
    type   = 0x17 application data (1..=16384 bytes)
             0x15 alert: close_notify (01 00) only
             0x16 handshake: KeyUpdate (18 00 00 01 00) only

One :class:`Sealer` and one :class:`Opener` per direction; :class:`RecordLayer` holds both
halves of one connection and the buffering between them and a byte stream.

``KEY_UPDATE_INTERVAL`` and ``MAX_RECORDS_PER_KEY`` are read when a Sealer or Opener is made: tests
lower them to exercise key updates without sending 2^20 records (values are clamped to the
protocol's limits).
"""

from __future__ import annotations

import struct
from typing import Optional, Tuple

from . import _crypto
from .errors import RecordError, Truncated
from .protocol import expand_label

__all__ = ["Sealer", "Opener", "RecordLayer", "HEADER_LEN", "TAG_LEN", "MAX_DATA_LEN",
           "MAX_RECORD_LEN", "KEY_UPDATE_INTERVAL", "MAX_RECORDS_PER_KEY", "next_secret"]

HEADER_LEN = 5
TAG_LEN = 16
#: Most application bytes in one record.
MAX_DATA_LEN = 16384
#: Smallest and largest ``L`` a header may state (type byte and tag, plus up to 16384 bytes).
MIN_CIPHERTEXT_LEN = 1 + TAG_LEN
MAX_CIPHERTEXT_LEN = MAX_DATA_LEN + 1 + TAG_LEN
MAX_RECORD_LEN = HEADER_LEN + MAX_CIPHERTEXT_LEN
#: A sender sends a KeyUpdate at the latest as the 2^20th record under a key.
KEY_UPDATE_INTERVAL = 1 << 20
#: A receiver accepts at most 2^24 - 1 records under one key.
MAX_RECORDS_PER_KEY = (1 << 24) - 1

_PREFIX = b"\x17\x03\x03"
APPLICATION_DATA = 0x17
ALERT = 0x15
HANDSHAKE = 0x16
CLOSE_NOTIFY = b"\x01\x00"
KEY_UPDATE = b"\x18\x00\x00\x01\x00"

#: What one opened record was.
DATA, CLOSED, UPDATED = "data", "close_notify", "key_update"

_BAD_TAG = ("a record failed authentication (tampered, reordered or dropped)", "record_bad_tag")
_BAD_HEADER = ("a record header is invalid", "record_bad_header")
_UNEXPECTED = ("a record carries a message the protocol does not allow",
               "record_unexpected_message")
_AFTER_CLOSE = ("bytes arrived after close_notify", "record_data_after_close")
_TOO_MANY = ("too many records under one key without a key update", "record_too_many")


def _bad_length(length: int) -> RecordError:
    return RecordError(f"a record length of {length} bytes is out of range", "record_bad_length")


def next_secret(secret: bytes) -> bytes:
    """The secret after a key update: ``Expand-Label(secret, "traffic upd", "", 32)``."""
    return expand_label(secret, b"traffic upd", 32)


class _Direction:
    """One direction's traffic secret, key, IV and sequence number."""

    __slots__ = ("secret", "aead", "iv", "seq")

    def __init__(self, secret: bytes):
        self._set(bytes(secret))

    def _set(self, secret: bytes) -> None:
        self.secret = secret
        self.aead = _crypto.aesgcm(expand_label(secret, b"key", 32))
        self.iv = int.from_bytes(expand_label(secret, b"iv", 12), "big")
        self.seq = 0

    def nonce(self) -> bytes:
        return (self.iv ^ self.seq).to_bytes(12, "big")

    def update(self) -> None:
        self._set(next_secret(self.secret))


class Sealer:
    """The sending half of one direction: application data, KeyUpdate and close_notify."""

    def __init__(self, secret: bytes, key_update_interval: Optional[int] = None):
        self._dir = _Direction(secret)
        interval = KEY_UPDATE_INTERVAL if key_update_interval is None else key_update_interval
        self.key_update_interval = max(2, min(int(interval), 1 << 20))

    def __repr__(self) -> str:
        return f"Sealer(seq={self._dir.seq})"

    @property
    def seq(self) -> int:
        return self._dir.seq

    def needs_key_update(self) -> bool:
        """True when the next record must be a KeyUpdate (it would be the interval's last)."""
        return self._dir.seq + 1 >= self.key_update_interval

    def _record(self, data: bytes, content_type: int) -> bytes:
        header = _PREFIX + struct.pack(">H", len(data) + 1 + TAG_LEN)
        sealed = self._dir.aead.encrypt(self._dir.nonce(), data + bytes([content_type]), header)
        self._dir.seq += 1
        return header + sealed

    def seal(self, data) -> bytes:
        """``data`` as application-data records of at most 16384 bytes, with a KeyUpdate wherever
        one is due. Empty data gives no record."""
        view = memoryview(data).cast("B")
        out = []
        for start in range(0, len(view), MAX_DATA_LEN):
            if self.needs_key_update():
                out.append(self.seal_key_update())
            out.append(self._record(bytes(view[start:start + MAX_DATA_LEN]), APPLICATION_DATA))
        return b"".join(out)

    def seal_key_update(self) -> bytes:
        """A KeyUpdate under the current key; then this sealer switches to the next secret."""
        record = self._record(KEY_UPDATE, HANDSHAKE)
        self._dir.update()
        return record

    def seal_close_notify(self) -> bytes:
        """close_notify: the last record of this direction."""
        prefix = self.seal_key_update() if self.needs_key_update() else b""
        return prefix + self._record(CLOSE_NOTIFY, ALERT)


class Opener:
    """The receiving half of one direction: opens records in order and enforces the rules."""

    def __init__(self, secret: bytes, max_records_per_key: Optional[int] = None):
        self._dir = _Direction(secret)
        limit = MAX_RECORDS_PER_KEY if max_records_per_key is None else max_records_per_key
        self.max_records_per_key = max(1, min(int(limit), (1 << 24) - 1))
        self.closed = False

    def __repr__(self) -> str:
        return f"Opener(seq={self._dir.seq}, closed={self.closed})"

    @property
    def seq(self) -> int:
        return self._dir.seq

    @staticmethod
    def record_len(buffered) -> Optional[int]:
        """The length of the record that starts ``buffered`` once its 5-byte header is there
        (None before). A bad header or length is refused here, before the body is read."""
        if len(buffered) < HEADER_LEN:
            return None
        if bytes(buffered[:3]) != _PREFIX:
            raise RecordError(*_BAD_HEADER)
        length = (buffered[3] << 8) | buffered[4]
        if not MIN_CIPHERTEXT_LEN <= length <= MAX_CIPHERTEXT_LEN:
            raise _bad_length(length)
        return HEADER_LEN + length

    def open(self, record) -> Tuple[str, bytes]:
        """Opens one whole record: ``(DATA, bytes)``, ``(CLOSED, b"")`` or ``(UPDATED, b"")``.
        Raises RecordError; nothing of a record that fails is returned."""
        if self.closed:
            raise RecordError(*_AFTER_CLOSE)
        length = self.record_len(record)
        if length is None:
            raise RecordError(*_BAD_HEADER)
        if len(record) != length:
            raise _bad_length(len(record))
        if self._dir.seq >= self.max_records_per_key:
            raise RecordError(*_TOO_MANY)
        record = bytes(record)
        try:
            inner = self._dir.aead.decrypt(self._dir.nonce(), record[HEADER_LEN:],
                                           record[:HEADER_LEN])
        except Exception as err:  # cryptography's InvalidTag
            raise RecordError(*_BAD_TAG) from err
        self._dir.seq += 1
        if not inner:
            raise RecordError(*_UNEXPECTED)
        content_type, data = inner[-1], inner[:-1]
        if content_type == APPLICATION_DATA and data:
            return DATA, data
        if content_type == ALERT and data == CLOSE_NOTIFY:
            self.closed = True
            return CLOSED, b""
        if content_type == HANDSHAKE and data == KEY_UPDATE:
            self._dir.update()
            return UPDATED, b""
        raise RecordError(*_UNEXPECTED)


class RecordLayer:
    """Both halves of one sealed connection, and the buffer of ciphertext not yet opened.

    ``feed`` takes ciphertext as it arrives and gives back the plaintext of every whole record;
    a record that fails is never returned. When a record fails after others in the same call,
    the earlier records' plaintext is returned and the failure is kept in ``error`` (deliver the
    plaintext, then raise it); when nothing came before it, the failure is raised at once.
    """

    def __init__(self, seal_secret: bytes, open_secret: bytes):
        self.sealer = Sealer(seal_secret)
        self.opener = Opener(open_secret)
        self._buffer = bytearray()
        #: A failure met after some plaintext was returned; raise it once that is delivered.
        self.error: Optional[RecordError] = None
        self.write_closed = False

    @classmethod
    def for_side(cls, secrets, side: str) -> "RecordLayer":
        """The layer of the client (seals c2s, opens s2c) or the server (the other way round)."""
        if side == "client":
            return cls(secrets.c2s, secrets.s2c)
        return cls(secrets.s2c, secrets.c2s)

    @property
    def read_closed(self) -> bool:
        """True once close_notify has been opened."""
        return self.opener.closed

    def feed(self, ciphertext) -> bytes:
        if self.error is not None:
            raise self.error
        if self.opener.closed:
            if ciphertext:
                raise RecordError(*_AFTER_CLOSE)
            return b""
        buffer = self._buffer
        buffer += ciphertext
        out = []
        pos = 0
        try:
            while True:
                length = Opener.record_len(bytes(buffer[pos:pos + HEADER_LEN]))
                if length is None or len(buffer) - pos < length:
                    break
                kind, data = self.opener.open(bytes(buffer[pos:pos + length]))
                pos += length
                if kind == DATA:
                    out.append(data)
                elif kind == CLOSED:
                    if pos != len(buffer):
                        raise RecordError(*_AFTER_CLOSE)
                    break
        except RecordError as err:
            self._buffer = bytearray()
            if not out:
                raise
            self.error = err
            return b"".join(out)
        del buffer[:pos]
        return b"".join(out)

    def eof(self) -> None:
        """The byte stream ended: fine after close_notify, else Truncated (raised)."""
        if not self.opener.closed:
            raise Truncated()

    def seal(self, data) -> bytes:
        return self.sealer.seal(data)

    def close_notify(self) -> bytes:
        """close_notify (once; b"" if it was already sealed)."""
        if self.write_closed:
            return b""
        self.write_closed = True
        return self.sealer.seal_close_notify()
