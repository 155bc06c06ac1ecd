"""linkgate/1 for Python: the client and server halves of the handshake, key files, and the
original recipe's ``seed`` scheme. Standard library only; Python 3.8+.

Client::

    import linkgate
    key = linkgate.load_key("alice.key")
    sock = linkgate.connect(("gate.example", 7700), "alice", key)
    sock.sendall(b"hello")            # plain application bytes from here on

Server::

    keyring = linkgate.load_keyring("keys/")      # {"alice": b"...", "bob": b"..."}
    conn, addr = listener.accept()
    try:
        key_id = linkgate.admit(conn, keyring)    # who connected
    except linkgate.LinkgateError as refused:
        conn.close()

The wire format is specified in PROTOCOL.md at the root of the linkgate repository.
"""

from __future__ import annotations

import hmac
import os
import re
import socket
import stat
import time
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple, Union

__all__ = [
    "LinkgateError", "Denied", "ImpostorServer", "NotLinkgate", "HandshakeTimeout",
    "Malformed", "RefusedAsMalformed", "ClosedEarly", "KeyFileError",
    "authenticate", "connect", "admit", "load_key", "load_keyring",
    "client_proof", "server_proof", "encode_response",
    "seed_answer", "seed_authenticate", "seed_admit", "load_seed_key",
    "MAGIC", "MIN_KEY_LEN", "MAX_KEY_LEN",
]

MAGIC = b"LGATE/1\n"
NONCE_LEN = 32
PROOF_LEN = 32
CHALLENGE_LEN = len(MAGIC) + NONCE_LEN
MODE_PLAIN = 0x00
VERDICT_ADMITTED = 0x00
VERDICT_DENIED = 0x01
VERDICT_MALFORMED = 0x02
MIN_KEY_LEN = 16
MAX_KEY_LEN = 64
MAX_KEY_ID_LEN = 64
_CLIENT_LABEL = b"linkgate/1 client proof\0"
_SERVER_LABEL = b"linkgate/1 server proof\0"
_KEY_ID = re.compile(rb"\A[A-Za-z0-9._-]{1,64}\Z")
# Unknown key ids are checked against this key, so they cost the same work as a wrong proof.
_DUMMY_KEY = os.urandom(32)

Address = Tuple[str, int]
Keyring = Mapping[str, bytes]


class LinkgateError(Exception):
    """Base class of every linkgate failure. Messages never contain key bytes or proofs."""


class Denied(LinkgateError):
    """The client was denied: wrong key, or a key id the server does not know.

    On the server side ``reason`` says which (``"unknown key id"`` or ``"wrong proof"``); the
    client cannot tell the two apart, by design.
    """

    def __init__(self, message: str = "denied by server", reason: Optional[str] = None):
        super().__init__(message)
        self.reason = reason


class ImpostorServer(LinkgateError):
    """The server admitted us without proving it holds the key: possible impostor."""

    def __init__(self) -> None:
        super().__init__("server failed to prove the key: possible impostor")


class NotLinkgate(LinkgateError):
    """The server's greeting is not linkgate/1 (e.g. an SSH or HTTP banner)."""


class HandshakeTimeout(LinkgateError, TimeoutError):
    """The handshake did not finish in time."""


class Malformed(LinkgateError):
    """Server side: the client's RESPONSE broke the wire format (it was sent ``malformed``)."""


class RefusedAsMalformed(LinkgateError):
    """Client side: the server says our RESPONSE was malformed, or sent an unknown verdict."""


class ClosedEarly(LinkgateError):
    """The peer closed the connection during the handshake."""


class KeyFileError(LinkgateError):
    """A key file was refused; the message names the file and the reason."""


# --- keys --------------------------------------------------------------------------------------

def _read_key_file(path: Union[str, Path], min_len: int, check_permissions: bool) -> bytes:
    path = Path(path)
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(f"key file {path}: cannot read: not a regular file")
        if check_permissions and os.name == "posix" and info.st_mode & 0o077:
            raise KeyFileError(
                f"key file {path}: permissions {stat.S_IMODE(info.st_mode):04o} are too open: "
                "it is accessible by group or others (run: chmod 600 on it)")
        with open(path, "rb") as file:
            raw = file.read(4097)
    except OSError as err:
        raise KeyFileError(f"key file {path}: cannot read: {err.strerror or err}") from None
    if len(raw) > 4096:
        raise KeyFileError(f"key file {path}: file is too large to be a key file")
    try:
        text = raw.decode("ascii").strip()
        if not text or any(c.isspace() for c in text):
            raise ValueError
        key = bytes.fromhex(text)
    except ValueError:
        raise KeyFileError(
            f"key file {path}: not a hex key (expected one line of hex digits)") from None
    if not min_len <= len(key) <= MAX_KEY_LEN:
        raise KeyFileError(
            f"key file {path}: key is {len(key)} bytes long; it must be {min_len} to "
            f"{MAX_KEY_LEN} bytes")
    return key


def load_key(path: Union[str, Path], check_permissions: bool = True) -> bytes:
    """Loads a key file with the same rules as the Rust side: one line of hex, 16 to 64 bytes,
    and (on POSIX) not accessible by group or others. Raises KeyFileError naming the file."""
    return _read_key_file(path, MIN_KEY_LEN, check_permissions)


def load_seed_key(path: Union[str, Path], check_permissions: bool = True) -> bytes:
    """Like load_key, but accepts keys of 1 to 64 bytes: for the seed scheme only, whose
    existing deployments use short text keys (``b'secret'`` is the file ``736563726574``)."""
    return _read_key_file(path, 1, check_permissions)


def load_keyring(directory: Union[str, Path], check_permissions: bool = True) -> Dict[str, bytes]:
    """Every ``*.key`` file in a directory, by id (the file's stem)."""
    keyring = {}
    for path in sorted(Path(directory).glob("*.key")):
        if not _KEY_ID.match(path.stem.encode()):
            raise KeyFileError(f"key file {path}: the file name's stem is not a valid key id")
        keyring[path.stem] = load_key(path, check_permissions)
    if not keyring:
        raise KeyFileError(f"no *.key files in {directory}")
    return keyring


# --- the I/O-free protocol ---------------------------------------------------------------------

def _transcript(label: bytes, server_nonce: bytes, client_nonce: bytes, key_id: bytes) -> bytes:
    return label + server_nonce + client_nonce + bytes([MODE_PLAIN, len(key_id)]) + key_id


def client_proof(key: bytes, server_nonce: bytes, client_nonce: bytes, key_id: str) -> bytes:
    """HMAC(K, "linkgate/1 client proof\\0" || server_nonce || client_nonce || mode || n || key_id)."""
    message = _transcript(_CLIENT_LABEL, server_nonce, client_nonce, key_id.encode("ascii"))
    return hmac.new(key, message, "sha256").digest()


def server_proof(key: bytes, server_nonce: bytes, client_nonce: bytes, key_id: str) -> bytes:
    """HMAC(K, "linkgate/1 server proof\\0" || server_nonce || client_nonce || mode || n || key_id)."""
    message = _transcript(_SERVER_LABEL, server_nonce, client_nonce, key_id.encode("ascii"))
    return hmac.new(key, message, "sha256").digest()


def encode_response(key: bytes, key_id: str, server_nonce: bytes, client_nonce: bytes) -> bytes:
    """The client's RESPONSE bytes."""
    raw_id = _check_key_id(key_id)
    proof = client_proof(key, server_nonce, client_nonce, key_id)
    return bytes([MODE_PLAIN, len(raw_id)]) + raw_id + client_nonce + proof


def _check_key_id(key_id: str) -> bytes:
    raw = key_id.encode("ascii", "replace")
    if not _KEY_ID.match(raw):
        raise ValueError(
            f"invalid key id {key_id!r}: use 1 to 64 ASCII letters, digits, '.', '_' or '-'")
    return raw


def _check_key(key: bytes) -> None:
    if not MIN_KEY_LEN <= len(key) <= MAX_KEY_LEN:
        raise ValueError(f"a key must be 16 to 64 bytes long, this one has {len(key)}")


# --- socket helpers ----------------------------------------------------------------------------

class _Deadline:
    """One deadline for a whole handshake, applied to each blocking call."""

    def __init__(self, sock: socket.socket, timeout: Optional[float]):
        self.sock = sock
        self.end = None if timeout is None else time.monotonic() + timeout
        self.timeout = timeout
        self.saved = sock.gettimeout()

    def arm(self) -> None:
        if self.end is None:
            return
        left = self.end - time.monotonic()
        if left <= 0:
            raise HandshakeTimeout(f"handshake timed out after {self.timeout}s")
        self.sock.settimeout(left)

    def restore(self) -> None:
        self.sock.settimeout(self.saved)


def _recv(deadline: _Deadline, at_most: int) -> bytes:
    """One recv of up to at_most bytes within the deadline; b"" means the peer closed."""
    deadline.arm()
    try:
        return deadline.sock.recv(at_most)
    except socket.timeout:
        raise HandshakeTimeout(f"handshake timed out after {deadline.timeout}s") from None


def _recv_exact(deadline: _Deadline, n: int) -> bytes:
    """Exactly n bytes (never more: application bytes stay in the socket)."""
    data = bytearray()
    while len(data) < n:
        chunk = _recv(deadline, n - len(data))
        if not chunk:
            raise ClosedEarly("peer closed the connection during the handshake")
        data += chunk
    return bytes(data)


def _send(deadline: _Deadline, data: bytes) -> None:
    deadline.arm()
    try:
        deadline.sock.sendall(data)
    except socket.timeout:
        raise HandshakeTimeout(f"handshake timed out after {deadline.timeout}s") from None


def _describe(greeting: bytes) -> str:
    if all(32 <= b < 127 or b in (9, 10, 13) for b in greeting):
        return repr(greeting.decode("ascii").rstrip())
    return f"{len(greeting)} bytes that are not text"


def _read_challenge(deadline: _Deadline) -> bytes:
    """The 40-byte CHALLENGE, giving up as soon as the greeting differs from LGATE/1."""
    data = b""
    while len(data) < CHALLENGE_LEN:
        chunk = _recv(deadline, CHALLENGE_LEN - len(data))
        if not chunk:
            if data and not MAGIC.startswith(data[:len(MAGIC)]):
                raise NotLinkgate(f"not a linkgate/1 server: it sent {_describe(data)}")
            raise ClosedEarly("peer closed the connection during the handshake")
        data += chunk
        if data[:len(MAGIC)] != MAGIC[:len(data)]:
            raise NotLinkgate(f"not a linkgate/1 server: it sent {_describe(data)}")
    return data[len(MAGIC):]


# --- client ------------------------------------------------------------------------------------

def authenticate(sock: socket.socket, key_id: str, key: bytes,
                 timeout: Optional[float] = 5.0) -> socket.socket:
    """Runs the client half of linkgate/1 on a connected socket and returns it, ready for
    application bytes. Succeeds only once the server has proved it holds the key.

    Raises Denied, ImpostorServer, NotLinkgate, HandshakeTimeout, RefusedAsMalformed or
    ClosedEarly (all LinkgateError), or OSError for network failures.
    """
    _check_key(key)
    raw_id = _check_key_id(key_id)
    deadline = _Deadline(sock, timeout)
    try:
        server_nonce = _read_challenge(deadline)
        client_nonce = os.urandom(NONCE_LEN)
        _send(deadline, encode_response(key, raw_id.decode(), server_nonce, client_nonce))
        verdict = _recv_exact(deadline, 1)[0]
        if verdict == VERDICT_DENIED:
            raise Denied()
        if verdict == VERDICT_MALFORMED:
            raise RefusedAsMalformed("server refused our response as malformed")
        if verdict != VERDICT_ADMITTED:
            raise RefusedAsMalformed(f"server sent a malformed verdict (byte 0x{verdict:02x})")
        try:
            proof = _recv_exact(deadline, PROOF_LEN)
        except ClosedEarly:
            raise ImpostorServer() from None
        expected = server_proof(key, server_nonce, client_nonce, raw_id.decode())
        if not hmac.compare_digest(expected, proof):
            raise ImpostorServer()
    finally:
        deadline.restore()
    return sock


def connect(address: Address, key_id: str, key: bytes, timeout: float = 5.0) -> socket.socket:
    """Connects over TCP and authenticates; the timeout covers both. Returns the socket."""
    started = time.monotonic()
    try:
        sock = socket.create_connection(address, timeout=timeout)
    except socket.timeout:
        raise HandshakeTimeout(f"connect timed out after {timeout}s") from None
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)
        return authenticate(sock, key_id, key, max(0.0, timeout - (time.monotonic() - started)))
    except BaseException:
        sock.close()
        raise


# --- server ------------------------------------------------------------------------------------

def _refuse(sock: socket.socket, verdict: int) -> None:
    try:
        sock.sendall(bytes([verdict]))
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def admit(sock: socket.socket, keyring: Keyring, timeout: Optional[float] = 5.0) -> str:
    """Runs the server half of linkgate/1 on an accepted socket; returns the authenticated key
    id. Reads exactly the protocol's bytes, so application bytes sent right after the RESPONSE
    stay in the socket.

    On refusal the client has been sent what the protocol says and the exception says why:
    Denied (``.reason``: "unknown key id ..." or "wrong proof ..."), Malformed,
    HandshakeTimeout or ClosedEarly. Close the socket afterwards.
    """
    deadline = _Deadline(sock, timeout)
    try:
        server_nonce = os.urandom(NONCE_LEN)
        _send(deadline, MAGIC + server_nonce)
        mode, n = _recv_exact(deadline, 2)
        if mode != MODE_PLAIN:
            _refuse(sock, VERDICT_MALFORMED)
            raise Malformed(f"malformed response: reserved mode 0x{mode:02x}")
        if not 1 <= n <= MAX_KEY_ID_LEN:
            _refuse(sock, VERDICT_MALFORMED)
            raise Malformed(f"malformed response: key id length {n} is outside 1..=64")
        rest = _recv_exact(deadline, n + NONCE_LEN + PROOF_LEN)
        raw_id, client_nonce, proof = rest[:n], rest[n:n + NONCE_LEN], rest[n + NONCE_LEN:]
        if not _KEY_ID.match(raw_id):
            _refuse(sock, VERDICT_MALFORMED)
            raise Malformed("malformed response: key id has a forbidden character")
        key_id = raw_id.decode("ascii")
        key = keyring.get(key_id)
        if key is not None:
            _check_key(key)
        # An unknown id is checked against a dummy key: the same work as a wrong proof.
        expected = client_proof(key if key is not None else _DUMMY_KEY,
                                server_nonce, client_nonce, key_id)
        proof_ok = hmac.compare_digest(expected, proof)
        if key is None or not proof_ok:
            _refuse(sock, VERDICT_DENIED)
            reason = (f"unknown key id {key_id}" if key is None
                      else f"wrong proof for key id {key_id}")
            raise Denied(f"denied: {reason}", reason=reason)
        _send(deadline, bytes([VERDICT_ADMITTED])
              + server_proof(key, server_nonce, client_nonce, key_id))
        return key_id
    finally:
        deadline.restore()


# --- seed: the original recipe's scheme ---------------------------------------------------------
# No key id, no server authentication, no verdict. For compatibility with existing deployments
# of the recipe only; see PROTOCOL.md for what it lacks.

def seed_answer(key: bytes, nonce: bytes) -> bytes:
    """HMAC-SHA-256(K, nonce): the recipe client's answer."""
    return hmac.new(key, nonce, "sha256").digest()


def seed_authenticate(sock: socket.socket, key: bytes, timeout: Optional[float] = 5.0) -> None:
    """Client half of seed: read 32 bytes, answer with their HMAC. There is no verdict: a
    server that refuses simply closes the connection."""
    deadline = _Deadline(sock, timeout)
    try:
        nonce = _recv_exact(deadline, NONCE_LEN)
        _send(deadline, seed_answer(key, nonce))
    finally:
        deadline.restore()


def seed_admit(sock: socket.socket, key: bytes, timeout: Optional[float] = 5.0) -> bool:
    """Server half of seed: send 32 random bytes, compare the answer in constant time. Returns
    False (close the socket without a message) on a wrong answer; raises HandshakeTimeout or
    ClosedEarly for a client that stalls or leaves."""
    deadline = _Deadline(sock, timeout)
    try:
        nonce = os.urandom(NONCE_LEN)
        _send(deadline, nonce)
        return hmac.compare_digest(seed_answer(key, nonce), _recv_exact(deadline, PROOF_LEN))
    finally:
        deadline.restore()
