"""Blocking handshake I/O: one deadline for a whole handshake, applied to each socket call, and
the translation of socket errors into LinkgateErrors."""

from __future__ import annotations

import socket
import time
from typing import Optional

from .errors import ClosedEarly, HandshakeTimeout, duration_text

# What a handshake was waiting for when its time ran out.
CONNECT = "connect"
CHALLENGE = "challenge"
VERDICT = "verdict"
RESPONSE = "response"


def timeout_error(after: Optional[float], waiting: str) -> HandshakeTimeout:
    """The timeout's message names the setting ("timed out after 5s"), not the time left."""
    text = duration_text(after or 0.0)
    if waiting == CONNECT:
        message = f"timed out after {text} connecting"
    elif waiting == CHALLENGE:
        message = (f"timed out after {text}: the server sent nothing (is it a linkgate gate? a "
                   "server that waits for the client to speak first, such as HTTP or Redis, "
                   "is not)")
    elif waiting == VERDICT:
        message = f"handshake timed out after {text} waiting for the server's verdict"
    else:
        message = f"handshake timed out after {text} waiting for the client's response"
    return HandshakeTimeout(message, after=after)


def check_timeout(timeout: Optional[float]) -> Optional[float]:
    from .errors import InvalidArgument
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise InvalidArgument(f"a timeout is a number of seconds (or None), not {timeout!r}")
    timeout = float(timeout)
    if not timeout > 0:  # also NaN
        raise InvalidArgument(f"a timeout must be positive (or None), not {timeout}")
    return timeout


class Deadline:
    """A point in time computed once from a timeout setting (None: no deadline)."""

    def __init__(self, timeout: Optional[float]):
        self.timeout = check_timeout(timeout)
        self.end = None if self.timeout is None else time.monotonic() + self.timeout

    def remaining(self) -> Optional[float]:
        if self.end is None:
            return None
        return self.end - time.monotonic()


class HandshakeIO:
    """A socket's reads and writes during a handshake, each within what is left of the
    deadline. ``restore()`` puts the socket's own timeout back."""

    def __init__(self, sock: socket.socket, deadline: Deadline):
        self.sock = sock
        self.deadline = deadline
        self.saved = sock.gettimeout()

    def _arm(self) -> None:
        left = self.deadline.remaining()
        if left is not None and left <= 0:
            raise socket.timeout("timed out")
        self.sock.settimeout(left)

    def recv(self, at_most: int) -> bytes:
        self._arm()
        return self.sock.recv(at_most)

    def recv_exact(self, n: int) -> bytes:
        """Exactly n bytes (never more: what follows stays in the socket)."""
        data = bytearray()
        while len(data) < n:
            chunk = self.recv(n - len(data))
            if not chunk:
                raise ClosedEarly()
            data += chunk
        return bytes(data)

    def send(self, data: bytes) -> None:
        self._arm()
        self.sock.sendall(data)

    def restore(self) -> None:
        try:
            self.sock.settimeout(self.saved)
        except OSError:
            pass
