"""The original recipe's ``seed`` scheme, for compatibility with its existing deployments only.

The server sends 32 random bytes, the client answers ``HMAC(K, nonce)``, the server compares in
constant time. The HMAC is SHA-256 by default; ``digest="md5"`` speaks the recipe as published,
whose ``hmac.new(key, msg)`` meant HMAC-MD5 until Python 3.8 made the digest a required argument. No key id, no server authentication, no verdict, no sealing: see
PROTOCOL.md for what it lacks. Keys may be short (``b'secret'``); see :func:`load_seed_key`.
"""

from __future__ import annotations

import hmac
import os
import socket
from typing import Optional

from . import _io
from .errors import (HandshakeTimeout, InvalidArgument, LinkgateError, duration_text,
                     network_error)
from .keys import Key, check_key

__all__ = ["seed_answer", "seed_authenticate", "seed_admit", "SEED_DIGESTS"]

NONCE_LEN = 32
#: The digests the recipe's HMAC may use, and the answer's length under each.
SEED_DIGESTS = {"sha256": 32, "md5": 16}


def _secret(key) -> bytes:
    if isinstance(key, Key):
        key = key.secret
    return check_key(key, 1)


def _check_digest(digest: str) -> str:
    if digest not in SEED_DIGESTS:
        raise InvalidArgument(f"unknown seed digest {digest!r} (use \"sha256\" or \"md5\")")
    return digest


def seed_answer(key, nonce: bytes, digest: str = "sha256") -> bytes:
    """``HMAC(K, nonce)`` with ``digest`` (``"sha256"`` or ``"md5"``): the recipe client's
    answer."""
    return hmac.new(_secret(key), nonce, _check_digest(digest)).digest()


def _run(sock: socket.socket, timeout: Optional[float], waiting: str, steps):
    deadline = _io.Deadline(timeout)
    hio = _io.HandshakeIO(sock, deadline)
    try:
        return steps(hio)
    except LinkgateError:
        raise
    except socket.timeout as err:
        text = duration_text(deadline.timeout or 0.0)
        raise HandshakeTimeout(f"seed handshake timed out after {text} waiting for the "
                               f"{waiting}", after=deadline.timeout) from err
    except OSError as err:
        raise network_error(err, "during the seed handshake") from err
    finally:
        hio.restore()


def seed_authenticate(sock: socket.socket, key, timeout: Optional[float] = 5.0, *,
                      digest: str = "sha256") -> None:
    """Client half of seed: read 32 bytes, answer with their HMAC. There is no verdict: a server
    that refuses simply closes the connection. ``key`` is bytes or a Key (load_seed_key)."""
    secret = _secret(key)
    _check_digest(digest)

    def steps(hio: _io.HandshakeIO) -> None:
        nonce = hio.recv_exact(NONCE_LEN)
        hio.send(seed_answer(secret, nonce, digest))

    _run(sock, timeout, "server's nonce", steps)


def seed_admit(sock: socket.socket, key, timeout: Optional[float] = 5.0, *,
               digest: str = "sha256") -> bool:
    """Server half of seed: send 32 random bytes, compare the answer in constant time. Returns
    False (close the socket without a message) on a wrong answer; raises HandshakeTimeout,
    ClosedEarly or PeerReset for a client that stalls or leaves."""
    secret = _secret(key)
    answer_len = SEED_DIGESTS[_check_digest(digest)]

    def steps(hio: _io.HandshakeIO) -> bool:
        nonce = os.urandom(NONCE_LEN)
        hio.send(nonce)
        expected = seed_answer(secret, nonce, digest)
        return hmac.compare_digest(expected, hio.recv_exact(answer_len))

    return _run(sock, timeout, "client's answer", steps)

