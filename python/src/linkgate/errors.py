"""The exceptions of linkgate: every failure the public API raises is a :class:`LinkgateError`.

Each class has a ``reason``: a short, stable name for logs and metrics (the same names as the Rust
crate's ``Error::reason``), never containing a key id or anything else a peer chose. Messages never
contain key bytes, proofs or traffic secrets. When a failure comes from another exception (a socket
error, a missing package), that exception is chained as ``__cause__``.

Network failures are also instances of the matching built-in class, so code written for plain
sockets keeps working: :class:`PeerReset` is a ``ConnectionResetError``, :class:`ConnectionRefused`
a ``ConnectionRefusedError``, :class:`NetworkError` an ``OSError`` and :class:`Timeout` a
``TimeoutError`` (and a ``socket.timeout``).
"""

from __future__ import annotations

import errno as _errno
import socket
from typing import List, Optional

__all__ = [
    "LinkgateError", "Denied", "ImpostorServer", "NotLinkgate", "MalformedVerdict",
    "RefusedAsMalformed", "Malformed", "ModeNotAllowed", "KeyExchangeFailed", "ClosedEarly",
    "Timeout", "HandshakeTimeout", "NetworkError", "PeerReset", "ConnectionRefused",
    "RecordError", "Truncated", "KeyFileError", "InvalidArgument", "CryptographyMissing",
]


class LinkgateError(Exception):
    """Base class of every linkgate failure."""

    #: A short, stable name for the kind of failure (for logs and metrics).
    reason = "linkgate"


# --- client side: what the server did instead of admitting us -----------------------------------

class Denied(LinkgateError):
    """Denied: a wrong key, or a key id the server does not know.

    The client cannot tell the two apart, by design (``reason`` is ``"denied"``). On the server
    side ``reason`` says which it was (``"unknown_key_id"`` or ``"wrong_proof"``) and ``key_id``
    names the id the client presented.
    """

    reason = "denied"

    def __init__(self, message: str = "denied by the server", reason: Optional[str] = None,
                 key_id: Optional[str] = None):
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        self.key_id = key_id


class ImpostorServer(LinkgateError):
    """The server admitted us without proving it holds the key: possible impostor."""

    reason = "impostor_server"

    def __init__(self, message: str = "the server failed to prove the key: possible impostor"):
        super().__init__(message)


class NotLinkgate(LinkgateError):
    """The server's greeting is not linkgate/1 (e.g. an SSH or HTTP banner)."""

    reason = "not_linkgate"


class MalformedVerdict(LinkgateError):
    """The server's verdict byte is none of the defined ones."""

    reason = "malformed_verdict"


class RefusedAsMalformed(LinkgateError):
    """The server refused our RESPONSE as malformed.

    Between two linkgate/1 implementations this means the server does not allow the mode we asked
    for (``mode``): a gate refuses plain mode unless told otherwise, and may require sealed-fs.
    """

    reason = "refused_as_malformed"

    def __init__(self, mode: str):
        super().__init__(
            f"the server refused our response as malformed (it may not allow mode {mode})")
        self.mode = mode


# --- server side: why a client was refused ------------------------------------------------------

class Malformed(LinkgateError):
    """Server side: the client's RESPONSE broke the wire format (it was sent ``malformed``)."""

    reason = "malformed"


class ModeNotAllowed(LinkgateError):
    """Server side: the client asked for a mode the policy refuses (it was sent ``malformed``)."""

    reason = "mode_not_allowed"

    def __init__(self, mode: str, policy: str, key_id: Optional[str] = None):
        super().__init__(f"mode {mode} refused by policy: {policy}")
        self.mode = mode
        self.policy = policy
        self.key_id = key_id


class KeyExchangeFailed(LinkgateError):
    """Mode sealed-fs: the peer's X25519 public key gave no usable shared secret."""

    reason = "key_exchange"


# --- either side --------------------------------------------------------------------------------

class ClosedEarly(LinkgateError):
    """The peer closed the connection before the handshake finished."""

    reason = "closed_early"

    def __init__(self, message: str = "the peer closed the connection during the handshake"):
        super().__init__(message)


if socket.timeout is TimeoutError:  # Python 3.10+
    _TIMEOUT_BASES: tuple = (TimeoutError,)
else:  # pragma: no cover - Python 3.8 and 3.9
    _TIMEOUT_BASES = (TimeoutError, socket.timeout)


class Timeout(LinkgateError, *_TIMEOUT_BASES):  # type: ignore[misc]
    """Something did not finish in time: a ``TimeoutError`` and a ``socket.timeout`` too.

    A sealed stream raises it when a ``recv`` or ``send`` runs past the socket's timeout (see
    ``settimeout``); the stream stays usable after a timed-out ``recv``.
    """

    reason = "timeout"

    def __init__(self, message: str = "timed out", after: Optional[float] = None):
        super().__init__(message)
        #: The timeout setting that ran out, in seconds (not the time that was left).
        self.after = after


class HandshakeTimeout(Timeout):
    """The handshake did not finish within its timeout; the message shows the setting."""


class NetworkError(LinkgateError, OSError):
    """A network failure during a handshake or in a sealed stream; ``errno`` is the original's."""

    reason = "io"

    def __init__(self, message: str, errno: Optional[int] = None):
        super().__init__(message)
        self.errno = errno


class PeerReset(NetworkError, ConnectionResetError):
    """The peer reset the connection (or it broke: a broken pipe, an aborted connection)."""

    reason = "peer_reset"


class ConnectionRefused(NetworkError, ConnectionRefusedError):
    """Nothing listens at the address connected to."""

    reason = "connection_refused"


def network_error(err: OSError, during: str) -> NetworkError:
    """The LinkgateError for an OSError met ``during`` something ("during the handshake");
    raise it ``from err``."""
    if isinstance(err, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return PeerReset(f"the peer reset the connection {during}", err.errno)
    if isinstance(err, ConnectionRefusedError):
        return ConnectionRefused(f"connection refused {during}", err.errno)
    if err.errno == _errno.ECONNRESET or err.errno == _errno.EPIPE:
        return PeerReset(f"the peer reset the connection {during}", err.errno)
    return NetworkError(f"network error {during}: {err.strerror or err}", err.errno)


# --- sealed records -----------------------------------------------------------------------------

class RecordError(LinkgateError):
    """A sealed record could not be opened, or the sealed stream broke its rules (a tampered,
    dropped, reordered or injected record, a bad header or length, a message the protocol does
    not allow, bytes after close_notify, too many records under one key). Nothing of a failed
    record is ever returned, and the connection is reset. ``reason`` says which, e.g.
    ``"record_bad_tag"``."""

    reason = "record"

    def __init__(self, message: str, reason: Optional[str] = None):
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class Truncated(RecordError):
    """The stream ended (TCP EOF) without close_notify: the data may have been cut short."""

    reason = "record_truncated"

    def __init__(self, message: str = "the stream was cut off without close_notify (truncated)"):
        super().__init__(message)


# --- keys, arguments, installation --------------------------------------------------------------

class KeyFileError(LinkgateError):
    """A key file (or key directory) was refused; the message names the file and the reason.

    When several files of a directory are refused, ``problems`` lists one KeyFileError per file
    (all of them, at once).
    """

    reason = "key"

    def __init__(self, message: str, path=None, problems: Optional[List["KeyFileError"]] = None):
        super().__init__(message)
        #: The file or directory refused.
        self.path = path
        #: What is wrong with it (the message without the file's name).
        self.problem = message
        self.problems = problems or []


class InvalidArgument(LinkgateError, ValueError):
    """An argument cannot be used: a key of the wrong length, an invalid key id, an unknown
    mode, a bad keyring. Also a ``ValueError``."""

    reason = "invalid_argument"


class CryptographyMissing(LinkgateError, ImportError):
    """A sealed mode was asked for, but the ``cryptography`` package is not installed."""

    reason = "cryptography_missing"

    def __init__(self, mode: str, server: bool = False):
        if server:
            message = ("a server that admits only the sealed modes needs the cryptography "
                       "package: pip install \"linkgate[sealed]\" (or pass allow_plain=True, "
                       "for trusted paths only)")
        else:
            message = (f"mode {mode} needs the cryptography package: pip install "
                       "\"linkgate[sealed]\" (or pass mode=\"plain\", which only a gate that "
                       "allows plain mode admits)")
        super().__init__(message)
        self.mode = mode


def duration_text(seconds: float) -> str:
    """A duration as an operator would write it: ``5s``, ``300ms``, ``1m30s`` (as in Rust)."""
    millis = int(round(seconds * 1000))
    if millis == 0:
        return f"{int(round(seconds * 1_000_000))}µs"
    secs, ms = divmod(millis, 1000)
    if secs == 0:
        return f"{ms}ms"
    if ms == 0:
        if secs >= 60 and secs % 60 == 0:
            return f"{secs // 60}m"
        if secs >= 60:
            return f"{secs // 60}m{secs % 60}s"
        return f"{secs}s"
    return f"{secs}.{ms:03d}s"
