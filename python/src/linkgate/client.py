"""The client's half of linkgate/1 over blocking sockets: :func:`connect`, :func:`authenticate`."""

from __future__ import annotations

import socket
from typing import Optional, Tuple, Union

from . import _io
from . import _crypto
from .errors import (ClosedEarly, ConnectionRefused, ImpostorServer, InvalidArgument,
                     LinkgateError, NetworkError, network_error)
from .keys import Key, credentials
from .protocol import (CHALLENGE_LEN, MAGIC, PLAIN, SEALED_FS, ClientHandshake, check_mode,
                       greeting_matches_so_far, not_linkgate)
from .record import RecordLayer
from .sealed import SealedSocket

__all__ = ["connect", "authenticate"]

Stream = Union[socket.socket, SealedSocket]


def _read_challenge(hio: _io.HandshakeIO) -> bytes:
    """The server nonce of the 40-byte CHALLENGE, giving up as soon as the greeting differs."""
    data = b""
    while len(data) < CHALLENGE_LEN:
        chunk = hio.recv(CHALLENGE_LEN - len(data))
        if not chunk:
            if data and not greeting_matches_so_far(data):
                raise not_linkgate(data)
            raise ClosedEarly()
        data += chunk
        if not greeting_matches_so_far(data):
            raise not_linkgate(data)
    return data[len(MAGIC):]


def _authenticate(sock: socket.socket, key: Key, mode: str, deadline: _io.Deadline) -> Stream:
    handshake = ClientHandshake(key.id, key.secret, mode)
    hio = _io.HandshakeIO(sock, deadline)
    waiting = _io.CHALLENGE
    try:
        server_nonce = _read_challenge(hio)
        hio.send(handshake.response(server_nonce))
        waiting = _io.VERDICT
        first = hio.recv_exact(1)
        handshake.check_verdict_byte(first[0])
        try:
            rest = hio.recv_exact(handshake.admitted_verdict_len - 1)
        except ClosedEarly:
            raise ImpostorServer() from None
        secrets = handshake.finish(first + rest)
    except LinkgateError:
        raise
    except socket.timeout as err:
        raise _io.timeout_error(deadline.timeout, waiting) from err
    except OSError as err:
        raise network_error(err, "during the handshake") from err
    finally:
        hio.restore()
    if secrets is None:
        return sock
    return SealedSocket(sock, RecordLayer.for_side(secrets, "client"), key.id, mode)


def authenticate(sock: socket.socket, key_id, key: Optional[bytes] = None, *,
                 mode: str = SEALED_FS, timeout: Optional[float] = 5.0) -> Stream:
    """Runs the client's half of linkgate/1 on a connected socket, asking for ``mode``.

    ``key_id, key`` are the id and the key's bytes; or pass a :class:`Key` (from load_key)
    alone. Succeeds only once the server has proved it holds the key. Returns the stream: in
    plain mode the socket itself (its timeout restored), in the sealed modes a
    :class:`SealedSocket` over it.

    Raises Denied, RefusedAsMalformed (the server refuses the mode), ImpostorServer,
    NotLinkgate, HandshakeTimeout, ClosedEarly, PeerReset, NetworkError, KeyExchangeFailed,
    CryptographyMissing (a sealed mode without ``cryptography``) or InvalidArgument: all
    LinkgateErrors. The socket is left open; close it on failure.
    """
    key_obj = credentials(key_id, key)
    return _authenticate(sock, key_obj, check_mode(mode), _io.Deadline(timeout))


def _check_address(address) -> Tuple[str, int]:
    """``(host, port)``, or InvalidArgument: a "host:port" string would otherwise be indexed
    as a sequence and connect somewhere else."""
    if (not isinstance(address, (tuple, list)) or len(address) < 2
            or not isinstance(address[0], str) or isinstance(address[1], bool)
            or not isinstance(address[1], int)):
        raise InvalidArgument(f"an address is (host, port), e.g. (\"127.0.0.1\", 7700), "
                              f"not {address!r}")
    return address[0], address[1]


def connect(address: Tuple[str, int], key_id, key: Optional[bytes] = None, *,
            mode: str = SEALED_FS, timeout: Optional[float] = 5.0,
            source_address: Optional[Tuple[str, int]] = None) -> Stream:
    """Connects over TCP and authenticates, asking for ``mode`` (default ``"sealed-fs"``); the
    timeout covers both. Returns the stream (a blocking socket in plain mode, a
    :class:`SealedSocket` in the sealed modes); see :func:`authenticate` for the errors, plus
    ConnectionRefused and other NetworkErrors for the TCP connection itself.
    """
    key_obj = credentials(key_id, key)
    mode = check_mode(mode)
    if mode != PLAIN:
        _crypto.require(mode)
    deadline = _io.Deadline(timeout)
    host, port = _check_address(address)
    try:
        sock = socket.create_connection((host, port), timeout=deadline.timeout,
                                        source_address=source_address)
    except socket.timeout as err:
        raise _io.timeout_error(deadline.timeout, _io.CONNECT) from err
    except ConnectionRefusedError as err:
        raise ConnectionRefused(f"cannot connect to {host}:{port}: connection refused (is the "
                                "gate running and listening there?)", err.errno) from err
    except OSError as err:
        raise NetworkError(f"cannot connect to {host}:{port}: {err.strerror or err}",
                           err.errno) from err
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)
        stream = _authenticate(sock, key_obj, mode, deadline)
    except BaseException:
        sock.close()
        raise
    return stream
