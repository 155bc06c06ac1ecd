"""The linkgate/1 wire format, proofs and key schedule, with no I/O (see PROTOCOL.md).

::

    CHALLENGE  server -> client  "LGATE/1\\n" || server_nonce(32)
    RESPONSE   client -> server  mode(1) || n(1) || key_id(n) || client_nonce(32)
                                 [|| e_C(32)] || client_proof(32)
    VERDICT    server -> client  0x00 [|| e_S(32)] || server_proof(32)    admitted
                                 0x01                                     denied
                                 0x02                                     malformed (or policy)

The bracketed X25519 public keys appear in mode 0x02 (sealed-fs) only. HMAC and HKDF use only the
standard library; X25519 comes from ``cryptography`` (sealed-fs only).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from typing import Dict, NamedTuple, Optional

from . import _crypto
from .errors import (Denied, ImpostorServer, InvalidArgument, KeyExchangeFailed, LinkgateError,
                     Malformed, MalformedVerdict, ModeNotAllowed, NotLinkgate, RefusedAsMalformed)
from .keys import MAX_KEY_ID_LEN, check_key, check_key_id, is_valid_key_id

__all__ = [
    "MAGIC", "NONCE_LEN", "PROOF_LEN", "SHARE_LEN", "CHALLENGE_LEN", "PLAIN", "SEALED",
    "SEALED_FS", "MODES", "client_proof", "server_proof", "encode_challenge", "encode_response",
    "response_remaining_len", "SessionSecrets", "key_schedule", "hkdf_extract", "hkdf_expand",
    "expand_label", "ClientHandshake", "Judgement", "judge",
]

MAGIC = b"LGATE/1\n"
NONCE_LEN = 32
PROOF_LEN = 32
SHARE_LEN = 32
CHALLENGE_LEN = len(MAGIC) + NONCE_LEN
RESPONSE_HEAD_LEN = 2
VERDICT_ADMITTED = 0x00
VERDICT_DENIED = 0x01
VERDICT_MALFORMED = 0x02

#: The modes, by name: what the stream carries after admission.
PLAIN = "plain"
SEALED = "sealed"
SEALED_FS = "sealed-fs"
MODES = (PLAIN, SEALED, SEALED_FS)
_MODE_BYTES = {PLAIN: 0x00, SEALED: 0x01, SEALED_FS: 0x02}
_MODE_NAMES = {byte: name for name, byte in _MODE_BYTES.items()}

_CLIENT_LABEL = b"linkgate/1 client proof\0"
_SERVER_LABEL = b"linkgate/1 server proof\0"
_C2S_LABEL = b"linkgate/1 c2s\0"
_S2C_LABEL = b"linkgate/1 s2c\0"

# Unknown key ids are checked against this key, so they cost the same work as a wrong proof.
_DUMMY_KEY = os.urandom(32)


def check_mode(mode) -> str:
    """The mode's name ("plain", "sealed" or "sealed-fs"), or InvalidArgument."""
    if isinstance(mode, int) and not isinstance(mode, bool) and mode in _MODE_NAMES:
        return _MODE_NAMES[mode]
    if mode in _MODE_BYTES:
        return mode
    raise InvalidArgument(f"unknown mode {mode!r} (use \"sealed-fs\", \"sealed\" or \"plain\")")


def _mac(key: bytes, *parts: bytes) -> bytes:
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for part in parts:
        mac.update(part)
    return mac.digest()


def _context(mode: str, key_id: str) -> bytes:
    """``mode || n || key_id``."""
    raw = check_key_id(key_id)
    return bytes([_MODE_BYTES[check_mode(mode)], len(raw)]) + raw


def client_proof(key: bytes, server_nonce: bytes, client_nonce: bytes, key_id: str,
                 mode: str = PLAIN, client_share: bytes = b"") -> bytes:
    """``HMAC(K, "linkgate/1 client proof\\0" || t [|| e_C])`` with
    ``t = server_nonce || client_nonce || mode || n || key_id``."""
    return _mac(key, _CLIENT_LABEL, server_nonce, client_nonce, _context(mode, key_id),
                client_share)


def server_proof(key: bytes, server_nonce: bytes, client_nonce: bytes, key_id: str,
                 mode: str = PLAIN, client_share: bytes = b"", server_share: bytes = b"") -> bytes:
    """``HMAC(K, "linkgate/1 server proof\\0" || t [|| e_C || e_S])``."""
    return _mac(key, _SERVER_LABEL, server_nonce, client_nonce, _context(mode, key_id),
                client_share, server_share)


def encode_challenge(server_nonce: bytes) -> bytes:
    """The CHALLENGE: ``"LGATE/1\\n" || server_nonce``."""
    return MAGIC + server_nonce


def encode_response(key: bytes, key_id: str, server_nonce: bytes, client_nonce: bytes,
                    mode: str = PLAIN, client_share: bytes = b"") -> bytes:
    """The client's RESPONSE bytes (``client_share`` is e_C, in sealed-fs only)."""
    mode = check_mode(mode)
    if (mode == SEALED_FS) != bool(client_share):
        raise InvalidArgument("a client share (e_C) is sent in mode sealed-fs, and only there")
    proof = client_proof(key, server_nonce, client_nonce, key_id, mode, client_share)
    return _context(mode, key_id) + client_nonce + client_share + proof


def response_remaining_len(head: bytes) -> int:
    """From the RESPONSE's first two bytes, how many remain: ``n + 64`` (``n + 96`` in sealed-fs).
    Raises Malformed (reserved mode, or n outside 1..=64)."""
    mode, n = head[0], head[1]
    if mode not in _MODE_NAMES:
        raise Malformed(f"malformed response: reserved mode 0x{mode:02x}")
    if not 1 <= n <= MAX_KEY_ID_LEN:
        raise Malformed(f"malformed response: key id length {n} is outside 1..=64")
    return n + NONCE_LEN + (SHARE_LEN if mode == 0x02 else 0) + PROOF_LEN


# --- key schedule -------------------------------------------------------------------------------

def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract with SHA-256 (RFC 5869): by its definition, HMAC(salt, IKM)."""
    return _mac(salt, ikm)


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand with SHA-256 (RFC 5869), from ``cryptography`` (the sealed modes need it)."""
    return _crypto.hkdf_expand(prk, info, length)


def expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    """TLS 1.3's HKDF-Expand-Label with an empty context (RFC 8446 section 7.1)."""
    info = struct.pack(">HB", length, 6 + len(label)) + b"tls13 " + label + b"\x00"
    return hkdf_expand(secret, info, length)


class SessionSecrets(NamedTuple):
    """The traffic secrets of a sealed session: client-to-server and server-to-client."""

    c2s: bytes
    s2c: bytes

    def __repr__(self) -> str:
        return "SessionSecrets(..)"


def key_schedule(key: bytes, server_nonce: bytes, client_nonce: bytes, key_id: str, mode: str,
                 shared: bytes = b"", client_share: bytes = b"", server_share: bytes = b"",
                 ) -> SessionSecrets:
    """``PRK = HKDF-Extract(server_nonce || client_nonce, K [|| X25519])``, then the c2s and s2c
    secrets over ``ctx = mode || n || key_id [|| e_C || e_S]``."""
    prk = hkdf_extract(server_nonce + client_nonce, key + shared)
    ctx = _context(mode, key_id) + client_share + server_share
    return SessionSecrets(hkdf_expand(prk, _C2S_LABEL + ctx, 32),
                          hkdf_expand(prk, _S2C_LABEL + ctx, 32))


# --- the client's half --------------------------------------------------------------------------

def greeting_matches_so_far(received: bytes) -> bool:
    """False as soon as a byte differs from ``LGATE/1\\n``."""
    n = min(len(received), len(MAGIC))
    return received[:n] == MAGIC[:n]


def describe_greeting(greeting: bytes) -> str:
    if all(32 <= b < 127 or b in (9, 10, 13) for b in greeting):
        return repr(greeting.decode("ascii").rstrip())
    return f"{len(greeting)} bytes that are not text"


def not_linkgate(greeting: bytes) -> NotLinkgate:
    return NotLinkgate(f"not a linkgate/1 server: it sent {describe_greeting(greeting)}")


class ClientHandshake:
    """The client's half, between the CHALLENGE and the VERDICT (no I/O). Its repr shows the
    mode and the id only."""

    def __init__(self, key_id: str, key: bytes, mode: str = SEALED_FS, *,
                 client_nonce: Optional[bytes] = None,
                 ephemeral_private: Optional[bytes] = None):
        self.key_id = key_id
        self._raw_id = check_key_id(key_id)
        self._key = check_key(key)
        self.mode = check_mode(mode)
        if self.mode != PLAIN:
            _crypto.require(self.mode)
        self._client_nonce = client_nonce if client_nonce is not None else os.urandom(NONCE_LEN)
        self._ephemeral = (_crypto.Ephemeral(ephemeral_private) if self.mode == SEALED_FS
                           else None)
        self._server_nonce = b""

    def __repr__(self) -> str:
        return f"ClientHandshake(key_id={self.key_id!r}, mode={self.mode!r})"

    def response(self, server_nonce: bytes) -> bytes:
        """The RESPONSE to the CHALLENGE that carried ``server_nonce``."""
        self._server_nonce = bytes(server_nonce)
        share = self._ephemeral.public if self._ephemeral else b""
        return encode_response(self._key, self.key_id, self._server_nonce, self._client_nonce,
                               self.mode, share)

    @property
    def admitted_verdict_len(self) -> int:
        """How long an admitting VERDICT is in this mode: 33, or 65 in sealed-fs."""
        return 1 + (SHARE_LEN if self.mode == SEALED_FS else 0) + PROOF_LEN

    def check_verdict_byte(self, first: int) -> None:
        """Raises the refusal a VERDICT's first byte stands for (nothing for ``admitted``)."""
        if first == VERDICT_ADMITTED:
            return
        if first == VERDICT_DENIED:
            raise Denied()
        if first == VERDICT_MALFORMED:
            raise RefusedAsMalformed(self.mode)
        raise MalformedVerdict(f"the server sent a malformed verdict (byte 0x{first:02x})")

    def finish(self, verdict: bytes) -> Optional[SessionSecrets]:
        """Checks a whole VERDICT: the server must prove the key (else ImpostorServer). Returns
        the traffic secrets in the sealed modes, None in plain mode."""
        if not verdict:
            raise ImpostorServer()
        self.check_verdict_byte(verdict[0])
        if len(verdict) != self.admitted_verdict_len:
            # An admission cut short of its proof is no better than a wrong one.
            raise ImpostorServer()
        client_share = self._ephemeral.public if self._ephemeral else b""
        server_share = verdict[1:1 + SHARE_LEN] if self._ephemeral else b""
        expected = server_proof(self._key, self._server_nonce, self._client_nonce, self.key_id,
                                self.mode, client_share, server_share)
        if not hmac.compare_digest(expected, verdict[-PROOF_LEN:]):
            raise ImpostorServer()
        # Keys only after the server's proof verifies.
        if self.mode == PLAIN:
            return None
        shared = self._ephemeral.agree(server_share, "server") if self._ephemeral else b""
        return key_schedule(self._key, self._server_nonce, self._client_nonce, self.key_id,
                            self.mode, shared, client_share, server_share)


# --- the server's half --------------------------------------------------------------------------

class Policy(NamedTuple):
    """Which modes a server admits."""

    allow_plain: bool = False
    require_forward_secrecy: bool = False

    def refusal(self, mode: str) -> Optional[str]:
        """None if ``mode`` is admitted, else why not."""
        if mode == PLAIN and not self.allow_plain:
            return "plain mode is not allowed (the server needs allow_plain=True)"
        if mode == SEALED and self.require_forward_secrecy:
            return "forward secrecy is required (require_forward_secrecy=True)"
        if mode != PLAIN and not _crypto.available():
            return ("the cryptography package is not installed on this server "
                    "(pip install \"linkgate[sealed]\")")
        return None

    def check_usable(self) -> None:
        """Raises CryptographyMissing if no mode at all could be admitted."""
        if not self.allow_plain:
            _crypto.require(SEALED_FS, server=True)


class Judgement(NamedTuple):
    """An admitted RESPONSE: who, which mode, the VERDICT to send and the traffic secrets."""

    key_id: str
    mode: str
    verdict: bytes
    secrets: Optional[SessionSecrets]

    def __repr__(self) -> str:
        return f"Judgement(key_id={self.key_id!r}, mode={self.mode!r})"


def _refused(err, verdict: int):
    err.verdict = bytes([verdict])
    return err


def judge(response: bytes, server_nonce: bytes, keyring: Dict[str, bytes],
          policy: Optional[Policy] = None, *,
          ephemeral_private: Optional[bytes] = None) -> Judgement:
    """Judges a whole RESPONSE against the keyring and the policy.

    Refusals are raised: Malformed, ModeNotAllowed or KeyExchangeFailed (send ``malformed``),
    Denied (send ``denied``; ``reason`` is ``unknown_key_id`` or ``wrong_proof``); each carries
    the VERDICT to send as ``verdict``. An unknown id is checked against a dummy key, so it
    costs the same HMAC work as a wrong proof; proofs are compared in constant time.
    """
    if len(response) < RESPONSE_HEAD_LEN:
        raise _refused(Malformed("malformed response: response has the wrong length"),
                       VERDICT_MALFORMED)
    bad_head = refuse_head(response[:RESPONSE_HEAD_LEN])
    if bad_head is not None:
        raise bad_head
    remaining = response_remaining_len(response[:RESPONSE_HEAD_LEN])
    if len(response) != RESPONSE_HEAD_LEN + remaining:
        raise _refused(Malformed("malformed response: response has the wrong length"),
                       VERDICT_MALFORMED)
    mode = _MODE_NAMES[response[0]]
    n = response[1]
    raw_id = bytes(response[2:2 + n])
    if not is_valid_key_id(raw_id):
        raise _refused(Malformed("malformed response: key id has a forbidden character"),
                       VERDICT_MALFORMED)
    key_id = raw_id.decode("ascii")
    rest = response[2 + n:]
    client_nonce = bytes(rest[:NONCE_LEN])
    client_share = bytes(rest[NONCE_LEN:NONCE_LEN + SHARE_LEN]) if mode == SEALED_FS else b""
    proof = bytes(rest[-PROOF_LEN:])
    refusal = (policy or Policy()).refusal(mode)
    if refusal is not None:
        raise _refused(ModeNotAllowed(mode, refusal, key_id), VERDICT_MALFORMED)

    known = keyring.get(key_id)
    expected = client_proof(known if known is not None else _DUMMY_KEY, server_nonce,
                            client_nonce, key_id, mode, client_share)
    proof_ok = hmac.compare_digest(expected, proof)
    if known is None:
        raise _refused(Denied(f"denied: unknown key id {key_id}", "unknown_key_id", key_id),
                       VERDICT_DENIED)
    if not proof_ok:
        raise _refused(Denied(f"denied: wrong proof for key id {key_id}", "wrong_proof", key_id),
                       VERDICT_DENIED)

    if mode == PLAIN:
        verdict = bytes([VERDICT_ADMITTED]) + server_proof(known, server_nonce, client_nonce,
                                                           key_id, mode)
        return Judgement(key_id, mode, verdict, None)
    server_share = b""
    shared = b""
    if mode == SEALED_FS:
        # The server's X25519 secret exists only once the client has proved the key.
        ephemeral = _crypto.Ephemeral(ephemeral_private)
        server_share = ephemeral.public
        try:
            shared = ephemeral.agree(client_share, "client")
        except KeyExchangeFailed as err:
            err.key_id = key_id  # type: ignore[attr-defined]
            _refused(err, VERDICT_MALFORMED)
            raise
    verdict = (bytes([VERDICT_ADMITTED]) + server_share
               + server_proof(known, server_nonce, client_nonce, key_id, mode, client_share,
                              server_share))
    secrets = key_schedule(known, server_nonce, client_nonce, key_id, mode, shared,
                           client_share, server_share)
    return Judgement(key_id, mode, verdict, secrets)


#: The multiplexed-tunnel modes (PROTOCOL.md): defined, but this package does not carry tunnels.
_MUX_MODE_NAMES = {0x11: "sealed+mux", 0x12: "sealed-fs+mux"}


def refuse_head(head: bytes) -> Optional[LinkgateError]:
    """The refusal (with its ``verdict``) for a RESPONSE head, or None if it is fine: Malformed,
    or ModeNotAllowed for a multiplexed tunnel (a defined mode, but not one this package serves).
    """
    if head[:1] and head[0] in _MUX_MODE_NAMES:
        return _refused(ModeNotAllowed(_MUX_MODE_NAMES[head[0]],
                                       "multiplexed tunnels are not supported by this package"),
                        VERDICT_MALFORMED)
    try:
        response_remaining_len(head)
    except Malformed as err:
        return _refused(err, VERDICT_MALFORMED)
    return None
